"""Linear probe on frozen features: a grid of lr x {last 1, last 4 blocks' CLS} x {+/- avgpool} heads
trained together (DINOv2 protocol), the best head chosen on held-out train (or on val).

The command line of ``dinolite-linear``; ``python -m dinolite.commands.linear`` and, from a clone,
``python eval/linear.py`` run the same :func:`main`.

    dinolite-linear --backbone output/demo --train DATA/train --val DATA/val --output linear.json

``--mode cached`` (default) extracts features once (eval transform) and trains on them: fast, and the
only mode under torchrun. ``--mode online`` runs the backbone on augmented images every step
(random-resized crop + flip), one pass per batch for all heads; single process.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Optional, Sequence

import torch

from dinolite.cli import bounded, make_parser, positive_float, positive_int
from dinolite.commands.eval_common import (
    add_common_args,
    add_num_classes_arg,
    add_transform_args,
    check_labelled_sources,
    check_outputs,
    checked_num_classes,
    eval_transform_for,
    features_for,
    few_shot_subset,
    finish,
    format_table,
    run_eval_main,
    setup,
    warn_unseen_val_labels,
    write_results,
)
from dinolite.eval.datasets import (
    IndexFilter,
    build_labelled_dataset,
    check_labels,
    source_labels,
)
from dinolite.eval.features import extract_features
from dinolite.eval.few_shot import (
    add_few_shot_args,
    few_shot_description,
)
from dinolite.eval.labels import ClassIndex
from dinolite.eval.linear import (
    DINOV2_LEARNING_RATES,
    LinearHeadGrid,
    ProbeResult,
    grid_top1,
    head_grid,
    heldout_mask,
    linear_probe_cached,
    online_batches,
    probe_features,
    select_best,
    shuffle_buffer,
    train_grid,
)
from dinolite.eval.transforms import (
    build_linear_train_transform,
)

heldout_fraction = bounded(float, 0.0, 1.0, exclusive_maximum=True, name="heldout_fraction")  # [0, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("--train", nargs="+", required=True, help="training set (folder or shard patterns)")
    parser.add_argument("--val", nargs="+", required=True, help="evaluation set (folder or shard patterns)")
    parser.add_argument("--mode", choices=("cached", "online"), default="cached")
    parser.add_argument("--learning-rates", type=positive_float, nargs="+", default=list(DINOV2_LEARNING_RATES))
    parser.add_argument("--n-blocks", type=positive_int, nargs="+", default=[1, 4], help="CLS of the last n blocks")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--probe-batch-size", type=positive_int, default=128, help="per-rank batch of the linear heads")
    parser.add_argument(
        "--epoch-length",
        type=positive_int,
        default=None,
        help="online mode: steps per epoch (default: len(train)/batch)",
    )
    parser.add_argument("--heldout-fraction", type=heldout_fraction, default=0.1, help="in [0, 1)")
    parser.add_argument("--select-on", choices=("heldout", "val"), default="heldout")
    add_num_classes_arg(parser)
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="cached mode: z-score each feature with training statistics first (MAE's probe protocol: a "
        "BatchNorm without affine before the head), for features with very different scales",
    )
    add_common_args(parser)
    add_transform_args(parser)
    add_few_shot_args(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_eval_main(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    check_labelled_sources(args)
    ctx = setup(args)
    depth = int(ctx.backbone.n_blocks)
    n_available = min(max(args.n_blocks), depth)
    if max(args.n_blocks) > depth:
        raise ValueError(f"--n-blocks {max(args.n_blocks)} but the backbone has {depth} blocks")
    if args.mode == "online" and ctx.world_size > 1:
        raise ValueError("--mode online runs in one process; use --mode cached under torchrun/srun")
    few_shot = few_shot_description(args.shots, args.train_fraction, args.few_shot_seed)
    if args.mode == "online" and args.standardize:
        raise ValueError("--standardize needs --mode cached (the statistics come from the extracted features)")
    if args.mode == "online" and few_shot is not None:
        raise ValueError("--shots/--train-fraction need --mode cached (the subset is drawn from extracted labels)")
    embed_dim = int(ctx.backbone.embed_dim)
    specs = head_grid(args.learning_rates, args.n_blocks, [False, True])
    feature_fn = functools.partial(probe_features, ctx.backbone, n_last_blocks=n_available)
    transform, desc = eval_transform_for(ctx, args)
    common = dict(transform=transform, transform_desc=desc, model_fn=feature_fn, kind=f"probe{n_available}")

    val = features_for(ctx, args, name="val", source=args.val, **common)
    if args.mode == "cached":
        train = features_for(ctx, args, name="train", source=args.train, **common)
        checked_num_classes(train, val, args)
        train = few_shot_subset(train, args)
        result = linear_probe_cached(
            train.features.to(ctx.device),
            train.labels.to(ctx.device),
            train.indices,
            val.features.to(ctx.device),
            val.labels.to(ctx.device),
            embed_dim=embed_dim,
            n_available=n_available,
            num_classes=args.num_classes,  # a bound when given; the heads are sized by the labels present
            specs=specs,
            epochs=args.epochs,
            batch_size=args.probe_batch_size,
            world_size=ctx.world_size,
            heldout_fraction=args.heldout_fraction,
            select_on=args.select_on,
            seed=args.seed,
            progress=ctx.is_main and not args.no_progress,
            standardize_features=args.standardize,
        )
    else:
        result = _online(args, ctx, specs, feature_fn, transform, val, embed_dim, n_available)

    out = result.to_json(args.select_on)
    out.update(
        backbone=str(args.backbone),
        mode=args.mode,
        epochs=args.epochs,
        crop_size=ctx.crop_size,
        few_shot=few_shot,
        standardized=args.standardize,
    )
    if ctx.is_main:
        print_summary(result, out, args.select_on, args.output)
    write_results(args.output, out, ctx.is_main)
    finish(ctx)
    return 0


def print_summary(result: ProbeResult, out: dict, select_on: str, output: Optional[str], top: int = 5) -> None:
    """The best head and the next few of the grid (every head is in the JSON), and the edge warning."""
    shown = result.summary_rows(top)
    rows = [
        (f"{g['lr']:g}", g["n_blocks"], g["avgpool"], g["selection_top1"], g["val_top1"])
        for g in (out["grid"][i] for i in shown)
    ]
    print(f"linear probe: {len(out['grid'])} heads; the {len(shown)} best on {select_on}:")
    print(format_table(("lr", "blocks", "avgpool", f"{select_on} top-1 %", "val top-1 %"), rows))
    b = out["best"]
    print(
        f"best (on {select_on}): lr={b['lr']:g} n_blocks={b['n_blocks']} avgpool={b['avgpool']} "
        f"-> val top-1 {out['top1']:.2f}%" + (f"  (every head in {output})" if output else "")
    )
    for warning in out["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def _online(args, ctx, specs, feature_fn, eval_transform, val, embed_dim, n_available) -> ProbeResult:
    train_transform = build_linear_train_transform(ctx.crop_size, ctx.mean, ctx.std, patch_size=ctx.patch_size)
    train_set = build_labelled_dataset(args.train, train_transform, 0, 1, option="--train")
    fraction = args.heldout_fraction if args.select_on == "heldout" else 0.0
    is_held = lambda idx: heldout_mask(torch.as_tensor(idx), fraction, args.seed)  # noqa: E731
    classes = _online_classes(args, val.labels)
    generator = torch.Generator().manual_seed(args.seed)

    def loader(epoch: int):
        items = shuffle_buffer(iter(train_set), 1000, generator)
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == args.probe_batch_size:
                yield torch.utils.data.default_collate(batch)
                batch = []

    torch.manual_seed(args.seed)
    grid = LinearHeadGrid(specs, embed_dim, n_available, classes.num_classes).to(ctx.device)
    batches = (
        (features, classes.positions(labels, "--train"))
        for features, labels in online_batches(loader, feature_fn, lambda idx: ~is_held(idx), ctx.device)
    )
    losses = train_grid(grid, batches, args.epochs * args.epoch_length, args.probe_batch_size, not args.no_progress)
    if args.select_on == "heldout":
        held_set = IndexFilter(
            build_labelled_dataset(args.train, eval_transform, 0, 1, "--train"), lambda i: bool(is_held(i))
        )
        held = extract_features(feature_fn, held_set, batch_size=args.batch_size, device=ctx.device, progress=False)
        sel_x, sel_y = held.features.to(ctx.device), classes.positions(held.labels, "--train").to(ctx.device)
    else:
        sel_x, sel_y = val.features.to(ctx.device), classes.positions(val.labels, "--val").to(ctx.device)
    best, selection = select_best(grid, sel_x, sel_y)
    val_top1 = grid_top1(grid, val.features.to(ctx.device), classes.positions(val.labels, "--val").to(ctx.device))
    return ProbeResult(list(specs), selection, val_top1, best, losses)


def _online_classes(args: argparse.Namespace, val_labels: torch.Tensor) -> ClassIndex:
    """The classes of the streamed training set, read from its labels alone (no image decoded), with the
    checks of cached mode; sets the default ``--epoch-length`` (every training sample once per epoch)."""
    train_labels = source_labels(args.train)
    check_labels(train_labels, args.num_classes, f"--train {' '.join(args.train)}")
    check_labels(val_labels, args.num_classes, f"--val {' '.join(args.val)}")
    warn_unseen_val_labels(train_labels, val_labels, args)
    classes = ClassIndex(train_labels, val_labels)
    if args.epoch_length is None:
        args.epoch_length = max(len(train_labels) // args.probe_batch_size, 1)
    return classes


if __name__ == "__main__":
    sys.exit(main())
