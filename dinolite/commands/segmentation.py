"""Linear semantic segmentation on frozen patch tokens (BatchNorm + 1x1 conv), ADE20K layout.

The command line of ``dinolite-segmentation``; ``python -m dinolite.commands.segmentation`` and, from a clone,
``python eval/segmentation.py`` run the same :func:`main`.

    dinolite-segmentation --backbone output/demo --data ADE_ROOT --num-classes 150 \
        --reduce-zero-label --output seg.json

Masks are checked (mode, size, class range) before any training. Single process (the head is small;
the backbone runs once per training batch).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dinolite.cli import bounded, make_parser, positive_float, positive_int
from dinolite.commands.eval_common import (
    add_common_args,
    add_normalisation_args,
    check_outputs,
    finish,
    format_table,
    run_eval_main,
    setup,
    write_results,
)
from dinolite.eval.segmentation import (
    IGNORE_INDEX,
    LinearSegmentationHead,
    SegmentationDataset,
    evaluate_segmentation,
    list_pairs,
    train_segmentation_head,
    validate_masks,
)
from dinolite.progress import progress_bar


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("--data", required=True, help="root with images/{training,validation} and annotations/{...}")
    parser.add_argument(
        "--num-classes",
        type=bounded(int, 1, IGNORE_INDEX, name="num_classes"),
        required=True,
        help=f"class ids 0..N-1 in the masks ({IGNORE_INDEX}: ignored)",
    )
    parser.add_argument("--reduce-zero-label", action="store_true", help="ADE convention: 0 -> ignored, c -> c-1")
    parser.add_argument("--layers", type=int, choices=(1, 4), default=1, help="patch tokens of the last 1 or 4 blocks")
    parser.add_argument("--inference", choices=("resize", "slide"), default="slide")
    parser.add_argument(
        "--crop-size", type=positive_int, default=None, help="training crop / window (default: training crop size)"
    )
    parser.add_argument("--stride", type=positive_int, default=None, help="sliding-window stride (default crop/2)")
    parser.add_argument("--iterations", type=positive_int, default=2000)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    add_normalisation_args(parser, "the backbone's")
    add_common_args(parser)
    parser.set_defaults(batch_size=8)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_eval_main(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    train_pairs, val_pairs = list_pairs(args.data, "train"), list_pairs(args.data, "val")
    validate_masks(train_pairs + val_pairs, args.num_classes, args.reduce_zero_label)
    ctx = setup(args)
    if ctx.world_size > 1:
        raise ValueError("eval/segmentation.py runs in one process; launch it without torchrun/srun")
    depth = int(ctx.backbone.n_blocks)
    if args.layers > depth:
        raise ValueError(f"--layers {args.layers} but the backbone has {depth} blocks")
    if ctx.crop_size % ctx.patch_size:
        raise ValueError(f"--crop-size {ctx.crop_size} is not a multiple of the patch size {ctx.patch_size}")
    stride = args.stride if args.stride is not None else max(ctx.crop_size // 2, ctx.patch_size)
    head = LinearSegmentationHead(args.layers * int(ctx.backbone.embed_dim), args.num_classes).to(ctx.device)
    train_set = SegmentationDataset(train_pairs, ctx.crop_size, ctx.mean, ctx.std, args.reduce_zero_label, train=True)
    losses = train_segmentation_head(
        ctx.backbone,
        head,
        train_set,
        n_layers=args.layers,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        device=ctx.device,
        num_workers=args.num_workers,
        seed=args.seed,
        progress=not args.no_progress,
    )
    val_set = SegmentationDataset(val_pairs, ctx.crop_size, ctx.mean, ctx.std, args.reduce_zero_label, train=False)
    progress = progress_bar(range(len(val_set)), total=len(val_set), desc="val", enabled=not args.no_progress)
    scores = evaluate_segmentation(
        ctx.backbone,
        head,
        val_set,
        num_classes=args.num_classes,
        n_layers=args.layers,
        mode=args.inference,
        crop_size=ctx.crop_size,
        stride=stride,
        device=ctx.device,
        progress=progress,
    )
    scores.update(
        backbone=str(args.backbone),
        layers=args.layers,
        inference=args.inference,
        crop_size=ctx.crop_size,
        iterations=args.iterations,
        final_loss=losses[-1],
        num_train=len(train_set),
        num_val=len(val_set),
    )
    rows = [(c, "-" if v is None else v) for c, v in enumerate(scores["per_class_iou"])]
    print(format_table(("class", "IoU %"), rows))
    print(f"mIoU {scores['mIoU']:.2f}%  pixel accuracy {scores['pixel_acc']:.2f}%  ({len(val_set)} val images)")
    write_results(args.output, scores)
    finish(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
