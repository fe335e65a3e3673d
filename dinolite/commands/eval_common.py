"""What the three eval entrypoints share: options, backbone + device set-up, cached extraction, output.

``eval/knn.py``, ``eval/linear.py`` and ``eval/segmentation.py`` are thin: they parse their own options,
call :func:`setup`, then the functions of :mod:`dinolite.eval`. Under ``torchrun`` or ``srun`` the
process group comes from :func:`dinolite.distributed.init_distributed`; rank 0 prints and writes.

Every numeric option is range-checked by argparse (:mod:`dinolite.cli`'s ``type=`` helpers) and the
output paths by :func:`check_outputs`, before a model is loaded; :func:`run_eval_main` prints bad input
and a missing optional extra as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from dinolite.cli import (
    INPUT_ERRORS,
    check_output_path,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
    seed_int,
)
from dinolite.distributed import destroy_distributed, init_distributed
from dinolite.eval.backbone import backbone_fingerprint, load_any_backbone
from dinolite.eval.cache import FeatureCache, cache_key
from dinolite.eval.datasets import build_labelled_dataset, check_class_folders, check_labels, check_source
from dinolite.eval.features import ExtractedFeatures, extract_features
from dinolite.eval.few_shot import few_shot_description, few_shot_indices
from dinolite.eval.finite import check_finite_rows
from dinolite.eval.labels import ClassIndex
from dinolite.eval.transforms import build_eval_transform, default_resize_size
from dinolite.extras import MissingExtraError
from dinolite.io import write_json_atomic

# What an eval command line reports as one ``error:`` line: bad input, and a missing optional extra
# (``--backbone hf-hub:...`` without ``dinolite[hub]``), as train, slurm, info and lab do.
EVAL_ERRORS = INPUT_ERRORS + (MissingExtraError,)


def run_eval_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]]) -> int:
    """:func:`dinolite.cli.run_main` with :data:`EVAL_ERRORS`."""
    return run_main(main, argv, errors=EVAL_ERRORS)


def check_outputs(args: argparse.Namespace, output_is_directory: bool = False) -> None:
    """``--output`` (a file, or a folder for ``output_is_directory``) and ``--cache-dir`` can be written:
    checked before any model is loaded, so a typo does not cost a whole evaluation."""
    if getattr(args, "output", None):
        check_output_path(args.output, "--output", directory=output_is_directory)
    if getattr(args, "cache_dir", None):
        check_output_path(args.cache_dir, "--cache-dir", directory=True)


def add_backbone_args(group: argparse._ActionsContainer) -> None:
    """``--backbone`` (also ``--checkpoint``) and ``--network``: the weights every eval command reads."""
    group.add_argument(
        "--backbone",
        "--checkpoint",
        dest="backbone",
        required=True,
        help="training run / checkpoint directory, or exported file",
    )
    group.add_argument(
        "--network",
        choices=("teacher", "student"),
        default=None,
        help="for a checkpoint: which network (default: the method's evaluated one, e.g. DINOv2's teacher)",
    )
    group.add_argument(
        "--student",
        metavar="NAME",
        default=None,
        help="for a multi-student distillation run: which student (its EMA by default; --network student for the raw one)",
    )


def single_process_device(choice: str) -> torch.device:
    """``--device auto|cpu|cuda`` of the one-process commands (visualize, attention segmentation)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def backbone_inputs(
    model: nn.Module, size: Optional[int], mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Input size and normalisation: the options when given, else the backbone's training recipe (its spec)."""
    spec = getattr(model, "spec", None)
    size = size or int(getattr(spec, "train_img_size", None) or getattr(spec, "img_size", None) or 224)
    mean = tuple(mean if mean is not None else (spec.mean if spec else (0.485, 0.456, 0.406)))
    std = tuple(std if std is not None else (spec.std if spec else (0.229, 0.224, 0.225)))
    return size, mean, std


def add_common_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone and run")
    add_backbone_args(group)
    group.add_argument("--output", default=None, help="write results JSON here (atomically)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    group.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (per rank)")
    group.add_argument("--num-workers", type=non_negative_int, default=2, help="data loading processes per rank")
    group.add_argument("--mixed-precision", action="store_true", help="bf16 autocast on CUDA (ignored on CPU)")
    group.add_argument("--cache-dir", default=None, help="reuse extracted features from this directory")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--seed", type=seed_int, default=0)


def add_transform_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("eval transform (defaults from the backbone's training recipe)")
    group.add_argument(
        "--crop-size", type=positive_int, default=None, help="center crop (default: training global crop size)"
    )
    group.add_argument(
        "--resize-size", type=positive_int, default=None, help="shorter side before cropping (default crop*256/224)"
    )
    add_normalisation_args(group, "the training")


def add_num_classes_arg(parser: argparse.ArgumentParser) -> None:
    """``--num-classes`` of the classifying CLIs (kNN, linear): a bound on the labels, not a tensor size."""
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="every label must lie below it (default: the number of distinct train labels)",
    )


def add_normalisation_args(group: argparse._ActionsContainer, default_from: str) -> None:
    """``--mean`` (finite) and ``--std`` (positive, finite): three values each, one per RGB channel."""
    group.add_argument(
        "--mean", type=finite_float, nargs=3, default=None, help=f"normalisation mean (default: {default_from} mean)"
    )
    group.add_argument(
        "--std", type=positive_float, nargs=3, default=None, help=f"normalisation std (default: {default_from} std)"
    )


@dataclass
class EvalContext:
    backbone: nn.Module
    backbone_path: str
    device: torch.device
    rank: int
    world_size: int
    patch_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def setup(args: argparse.Namespace) -> EvalContext:
    """Process group (when launched distributed), device, frozen backbone and transform defaults."""

    env = init_distributed(backend="auto", device=args.device)
    device = _resolve_device(args.device, env.local_rank)
    torch.manual_seed(args.seed)
    backbone = load_any_backbone(args.backbone, map_location=device, network=args.network, student=args.student)
    spec = getattr(backbone, "spec", None)
    patch_size = int(getattr(backbone, "patch_size", getattr(spec, "patch_size", 16)))
    crop_default = (getattr(spec, "train_img_size", None) or getattr(spec, "img_size", None) or 224) if spec else 224
    crop_size = _given(args, "crop_size", int(crop_default))
    mean = tuple(_given(args, "mean", spec.mean if spec else (0.485, 0.456, 0.406)))
    std = tuple(_given(args, "std", spec.std if spec else (0.229, 0.224, 0.225)))
    return EvalContext(backbone, str(args.backbone), device, env.rank, env.world_size, patch_size, crop_size, mean, std)


def _given(args: argparse.Namespace, name: str, default: Any) -> Any:
    """The option's value when it was given (``is None``, not falsiness: 0 is a value, refused at parse)."""
    value = getattr(args, name, None)
    return default if value is None else value


def features_for(
    ctx: EvalContext,
    args: argparse.Namespace,
    *,
    name: str,
    source: Sequence[str],
    transform: Callable,
    transform_desc: dict[str, Any],
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    kind: str,
) -> ExtractedFeatures:
    """Extract (or read from ``--cache-dir``) the features of one data set, on all ranks."""
    cache = FeatureCache(args.cache_dir) if args.cache_dir else None
    key = ""
    if cache is not None:
        key = cache_key(
            backbone=backbone_fingerprint(ctx.backbone_path),
            network=getattr(getattr(ctx.backbone, "spec", None), "source", None),  # a checkpoint holds two
            # a multi-student run holds several students (not in the key otherwise: earlier caches stay valid)
            **({"student": args.student} if getattr(args, "student", None) else {}),
            source=list(source),
            transform=transform_desc,
            kind=kind,
        )
        cached = cache.load(name, key)
        if cached is not None:
            if ctx.is_main:
                print(f"[{name}] features from cache {cache.path(name, key)}")
            check_finite_rows(cached.features, f"--{name} features (from the cache {cache.path(name, key)})")
            return cached
    dataset = build_labelled_dataset(source, transform, ctx.rank, ctx.world_size, option=f"--{name}")
    extracted = extract_features(
        model_fn,
        dataset,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=ctx.device,
        mixed_precision=args.mixed_precision,
        progress=not args.no_progress,
        desc=name,
    )
    check_finite_rows(extracted.features, f"--{name} {' '.join(source)}: the backbone's features", unit="images")
    if cache is not None and ctx.is_main:
        cache.save(name, key, extracted)
    return extracted


def check_labelled_sources(args: argparse.Namespace) -> None:
    """``--train`` and ``--val`` exist, and as image folders they hold the same class sub-folders."""
    for name in ("train", "val"):
        check_source(getattr(args, name), f"--{name}")
    check_class_folders(args.train, args.val)


def eval_transform_for(ctx: EvalContext, args: argparse.Namespace) -> tuple[Callable, dict]:
    """The evaluation transform of ``ctx``'s backbone (``--resize-size`` or the default for its crop) and
    its description, which keys the feature cache."""
    resize = _given(args, "resize_size", default_resize_size(ctx.crop_size))
    transform = build_eval_transform(ctx.crop_size, resize, ctx.mean, ctx.std, patch_size=ctx.patch_size)
    return transform, {"crop": ctx.crop_size, "resize": resize, "mean": ctx.mean, "std": ctx.std}


def checked_num_classes(train: ExtractedFeatures, val: ExtractedFeatures, args: argparse.Namespace) -> int:
    """``--num-classes`` (labels of both sets must lie below it), else the number of distinct labels of
    both sets. Every label must be >= 0; nothing is sized by the label values (:class:`ClassIndex`)."""
    check_labels(train.labels, args.num_classes, f"--train {' '.join(args.train)}")
    check_labels(val.labels, args.num_classes, f"--val {' '.join(args.val)}")
    warn_unseen_val_labels(train.labels, val.labels, args)
    return args.num_classes or ClassIndex(train.labels, val.labels).num_classes


def warn_unseen_val_labels(train_labels: torch.Tensor, val_labels: torch.Tensor, args: argparse.Namespace) -> None:
    """A val class absent from ``--train`` can only be missed: legitimate (a subset, a rare class), but worth
    a line on stderr, since it caps the accuracy below 100 %."""
    seen = ClassIndex(train_labels).classes
    unseen = ~torch.isin(val_labels.long().cpu(), seen)
    if bool(unseen.any()):
        labels = ClassIndex(val_labels[unseen]).describe()
        print(
            f"warning: {int(unseen.sum())} of {val_labels.numel()} images of --val {' '.join(args.val)} have "
            f"{labels}, absent from --train: they count as misses",
            file=sys.stderr,
        )


def few_shot_subset(train: ExtractedFeatures, args: argparse.Namespace) -> ExtractedFeatures:
    """The labelled training subset of ``--shots`` / ``--train-fraction`` (all of ``train`` without them)."""
    if few_shot_description(args.shots, args.train_fraction, args.few_shot_seed) is None:
        return train
    keep = few_shot_indices(
        train.labels, train.indices, shots=args.shots, fraction=args.train_fraction, seed=args.few_shot_seed
    )
    return ExtractedFeatures(train.features[keep], train.labels[keep], train.indices[keep])


def write_results(path: Optional[str], results: dict, ctx_is_main: bool = True) -> None:
    """Atomically write ``results`` as JSON (rank 0 only)."""
    if not path or not ctx_is_main:
        return
    write_json_atomic(path, results)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table with right-aligned columns; floats shown with 2 decimals."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
    return "\n".join(lines)


def finish(ctx: EvalContext) -> None:

    destroy_distributed(leave_together=True)
