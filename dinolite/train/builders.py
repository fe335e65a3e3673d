"""Config -> the pieces the training loop runs: the checks across config sections, the data source and
stream, the autocast precision. (A student's pretrained weights: :mod:`dinolite.train.pretrained`.)

This is where the full :class:`~dinolite.config.Config` is read and turned into plain arguments for the
modules below ``train`` (data, models, losses), so that those never see the config tree.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from dinolite.config import Config, ConfigError, dinov2_dataset_hint
from dinolite.data.builtin_sets import builtin_set, builtin_sets_text, misspelt_builtin_set, prepare_builtin_set
from dinolite.data.loader import build_train_loader


def validate_training_config(cfg: Config) -> None:
    """Checks that need several sections at once (the config module checks single keys; a method's
    builder checks its own sections)."""
    if not cfg.data.source:
        raise ConfigError(f"data.source is empty: give shard patterns, an image folder, or {builtin_sets_text()}")
    for source in cfg.data.source:
        hint = None if Path(source).exists() else dinov2_dataset_hint(source)
        if hint is not None:
            raise ConfigError(f"invalid value for 'data.source': {hint}")
    meant = misspelt_builtin_set(cfg.data.source)
    if meant is not None:
        raise ConfigError(
            f"invalid value for 'data.source': {list(cfg.data.source)} is no file or folder; did you mean [{meant}]?"
        )
    knn = cfg.evaluation
    own_eval = builtin_set(cfg.data.source) is not None
    only = f"only a built-in data.source, {builtin_sets_text()}, brings its own"
    if knn.knn_at_end and not (knn.knn_train and knn.knn_val) and not own_eval:
        raise ConfigError(
            f"invalid value for 'evaluation.knn_at_end': true, but evaluation.knn_train={list(knn.knn_train)} / "
            f"evaluation.knn_val={list(knn.knn_val)} are not both set ({only}); "
            "set both to labelled folders or shards, or evaluation.knn_at_end=false"
        )
    if knn.online_every > 0 and not (knn.knn_train and knn.knn_val) and not own_eval:
        raise ConfigError(
            f"invalid value for 'evaluation.online_every': {knn.online_every}, but evaluation.knn_train="
            f"{list(knn.knn_train)} / evaluation.knn_val={list(knn.knn_val)} are not both set ({only}); "
            "set both to labelled folders or shards, or evaluation.online_every=0"
        )


def resolve_train_source(cfg: Config, output_dir: Path, is_main: bool, barrier: Callable[[], None]) -> list[str]:
    """``data.source``, with a built-in set (``[digits]``, ``[fashion_mnist]``) replaced by its training
    shards, built under ``output_dir/data`` (rank 0 builds)."""
    name = builtin_set(cfg.data.source)
    if name is None:
        return list(cfg.data.source)

    root = output_dir / "data"
    if is_main:
        prepare_builtin_set(name, root)
    barrier()
    return list(prepare_builtin_set(name, root)["train"])  # idempotent: reads back what rank 0 wrote


def build_data_stream(
    cfg: Config,
    source: list[str],
    rank: int,
    world_size: int,
    start_batch: int,
    transform: Callable[..., dict[str, Any]],
    collate_fn: Callable[..., dict[str, Any]],
    worker_init_fn: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The infinite, deterministic batch stream, positioned after ``start_batch`` consumed batches.

    ``transform`` (the views of one image) and ``collate_fn`` come from the method's spec
    (``MethodSpec.build_transform`` / ``build_collate``). ``worker_init_fn`` runs in each loader worker
    (``dinolite-train`` passes :func:`dinolite.jobs.stop_signals.ignore_stop_signals`: a group-wide
    SIGTERM / Ctrl-C must not kill the workers before the trainer checkpoints).
    """
    loader = build_train_loader(
        source=source,
        transform=transform,
        collate_fn=collate_fn,
        batch_size=cfg.train.batch_size_per_gpu,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        start_batch=start_batch,
        max_image_pixels=cfg.data.max_image_pixels,
        max_sample_bytes=cfg.data.max_sample_bytes,
        shuffle_buffer_bytes=cfg.data.shuffle_buffer_bytes,
        max_skip_fraction=cfg.data.decode_errors_max_fraction,
        skip_window=cfg.data.decode_errors_window,
        worker_init_fn=worker_init_fn,
    )
    return iter(loader)


def autocast_dtype(compute_precision: str, device: torch.device) -> torch.dtype | None:
    """``auto`` -> bf16 on CUDA and fp32 (no autocast) on CPU; ``bf16``/``fp16``/``fp32`` as asked (fp16
    trains with loss scaling, :mod:`dinolite.train.loss_scaling`)."""
    if compute_precision == "fp32":
        return None
    if compute_precision == "bf16":
        return torch.bfloat16
    if compute_precision == "fp16":
        return torch.float16
    if compute_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ConfigError(f"train.compute_precision: {compute_precision!r} is not one of auto, bf16, fp16, fp32")


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> ContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on the device type, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
