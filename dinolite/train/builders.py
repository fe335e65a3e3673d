"""Config -> the pieces the training loop runs: data stream, optimizer, schedules, precision.

This is where the full :class:`~dinolite.config.Config` is read and turned into plain arguments for the
modules below ``train`` (data, models, losses), so that those never see the config tree.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from dinolite.config import Config, ConfigError
from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.collate import collate_data_and_cast
from dinolite.data.digits import prepare_digits
from dinolite.data.loader import build_train_loader
from dinolite.data.masking import MaskingGenerator
from dinolite.export.load import load_pretrained as load_exported_weights
from dinolite.export.load import load_state_dict_strict

DIGITS_SOURCE = "digits"


def validate_training_config(cfg: Config) -> None:
    """Checks that need several sections at once (the config module checks single keys)."""
    if cfg.dino.koleo_loss_weight > 0 and cfg.train.batch_size_per_gpu < 2:
        raise ConfigError(
            f"train.batch_size_per_gpu={cfg.train.batch_size_per_gpu} with dino.koleo_loss_weight="
            f"{cfg.dino.koleo_loss_weight}: KoLeo needs at least 2 images per GPU (the nearest neighbour of a "
            "lone sample does not exist); raise the batch size or set dino.koleo_loss_weight=0"
        )
    if not cfg.data.source:
        raise ConfigError("data.source is empty: give shard patterns, an image folder, or [digits]")
    knn = cfg.evaluation
    if knn.knn_at_end and not (knn.knn_train and knn.knn_val) and list(cfg.data.source) != [DIGITS_SOURCE]:
        raise ConfigError(
            f"invalid value for 'evaluation.knn_at_end': true, but evaluation.knn_train={list(knn.knn_train)} / "
            f"evaluation.knn_val={list(knn.knn_val)} are not both set (only data.source=[digits] brings its own); "
            "set both to labelled folders or shards, or evaluation.knn_at_end=false"
        )


def resolve_train_source(cfg: Config, output_dir: Path, is_main: bool, barrier: Callable[[], None]) -> list[str]:
    """``data.source``, with ``[digits]`` replaced by shards built under ``output_dir/data`` (rank 0 builds)."""
    if list(cfg.data.source) != [DIGITS_SOURCE]:
        return list(cfg.data.source)

    root = output_dir / "data"
    if is_main:
        prepare_digits(root)
    barrier()
    return list(prepare_digits(root)["train"])  # idempotent: reads back what rank 0 wrote


def build_collate_fn(cfg: Config) -> Callable[[list[Any]], dict[str, Any]]:
    """DINOv2's collate: crops stacked crop-major, iBOT block masks on the global crops."""

    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    n_tokens = grid * grid
    # As DINOv2: at most half of the patches in one block-mask draw.
    mask_generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=int(0.5 * n_tokens))
    return functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
        dtype=torch.float32,
    )


def build_data_stream(
    cfg: Config, source: list[str], rank: int, world_size: int, start_batch: int
) -> Iterator[dict[str, Any]]:
    """The infinite, deterministic batch stream, positioned after ``start_batch`` consumed batches."""

    loader = build_train_loader(
        source=source,
        transform=MultiCropAugmentation.from_config(cfg.crops),
        collate_fn=build_collate_fn(cfg),
        batch_size=cfg.train.batch_size_per_gpu,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        start_batch=start_batch,
        max_image_pixels=cfg.data.max_image_pixels,
        max_skip_fraction=cfg.data.decode_errors_max_fraction,
        skip_window=cfg.data.decode_errors_window,
    )
    return iter(loader)


def autocast_dtype(compute_precision: str, device: torch.device) -> torch.dtype | None:
    """``auto`` -> bf16 on CUDA and fp32 (no autocast) on CPU; ``bf16``/``fp32`` as asked."""
    if compute_precision == "fp32":
        return None
    if compute_precision == "bf16":
        return torch.bfloat16
    if compute_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ConfigError(f"train.compute_precision: {compute_precision!r} is not one of auto, bf16, fp32")


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> ContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on the device type, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_pretrained(path: str) -> Any:
    """Read ``student.pretrained_weights``: a DINOv2 ``.pth`` or a dinolite export (with heads if exported
    ``--with-heads``). Returns :class:`dinolite.export.load.PretrainedWeights`."""
    try:
        return load_exported_weights(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"student.pretrained_weights={path!r}: {exc}") from exc


def load_pretrained_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: str) -> None:
    """Strict load with a message naming the key, the mismatching keys and shapes."""

    load_state_dict_strict(module, state_dict, origin=f"student.pretrained_weights={path!r} ({what})")


def pretrained_part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.`` with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
