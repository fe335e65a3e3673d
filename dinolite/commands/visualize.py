"""Attention maps, PCA feature images, embedding spectrum and a collapse report for a backbone.

The command line of ``dinolite-visualize``; ``python -m dinolite.commands.visualize`` and, from a clone,
``python eval/visualize.py`` run the same :func:`main`.

    dinolite-visualize --backbone output/demo --images IMG_DIR_OR_FILES... --output vis/

The attention and PCA figures show up to ``--max-grid-images`` images taken in turn from every
folder/file given (0: all); the spectrum and collapse report use every image. No collapse verdict is
given on fewer than 40 images (the report says why). Writes ``attention.png`` (CLS self-attention of the last block, per head, over each image),
``pca.png`` (first three PCA components of the patch features as RGB), ``spectrum.png`` (sorted log
singular values of the feature covariance, with the verdict) and ``collapse_report.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from dinolite.cli import make_parser, non_negative_int, positive_int, probability
from dinolite.commands.eval_common import (
    add_backbone_args,
    add_normalisation_args,
    backbone_inputs,
    check_outputs,
    run_eval_main,
    single_process_device,
)
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.collapse_verdict import MIN_VERDICT_SAMPLES, NOT_ENOUGH_SAMPLES
from dinolite.eval.transforms import build_eval_transform
from dinolite.eval.visualize import dataset_cls_features, list_image_groups, visualize


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    add_backbone_args(parser)
    parser.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="directory for the PNGs and the JSON report")
    parser.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="square input size, a multiple of the patch size (default: training crop size)",
    )
    parser.add_argument(
        "--max-grid-images",
        type=non_negative_int,
        default=16,
        help="images shown in the attention / PCA figures, taken in turn from each source (0: all)",
    )
    parser.add_argument(
        "--foreground-threshold",
        type=probability,
        default=None,
        help="keep patches whose first PCA component (0..1) exceeds this",
    )
    parser.add_argument(
        "--dataset", nargs="+", default=None, help="image folder or shards for the spectrum (default: the --images)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_normalisation_args(parser, "the backbone's")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_eval_main(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args, output_is_directory=True)
    device = single_process_device(args.device)
    image_groups = list_image_groups(args.images)
    model = load_any_backbone(args.backbone, map_location=device, network=args.network, student=args.student)
    size, mean, std = backbone_inputs(model, args.size, args.mean, args.std)
    spectrum_features = None
    if args.dataset:
        transform = build_eval_transform(size, size, mean, std, patch_size=int(model.patch_size))
        spectrum_features = dataset_cls_features(model, args.dataset, transform, args.batch_size, device)
    outputs = visualize(
        model,
        image_groups,
        Path(args.output),
        size=size,
        mean=mean,
        std=std,
        max_grid_images=args.max_grid_images,
        foreground_threshold=args.foreground_threshold,
        spectrum_features=spectrum_features,
        batch_size=args.batch_size,
        device=device,
        title=Path(args.backbone).name,
    )
    r = outputs.report
    total = sum(len(g) for g in image_groups)
    print(
        f"figures show {outputs.grid_images} of {total} images from {len(image_groups)} source(s)"
        + ("" if outputs.grid_images == total else " (--max-grid-images 0 shows all)")
    )
    print(
        f"{r.num_samples} images, dim {r.dim}: std*sqrt(D) {r.std_ratio:.3f}, RankMe {r.rankme:.1f} "
        f"({100 * r.rankme_ratio:.1f}% of {min(r.num_samples, r.dim)}) -> {r.verdict}"
    )
    if r.verdict == NOT_ENOUGH_SAMPLES:
        print(
            f"no collapse verdict: {r.num_samples} samples < {MIN_VERDICT_SAMPLES}; below that the "
            f"dimensional-collapse rule cannot fire (pass more images or --dataset)"
        )
    if outputs.attention_png is None:
        print("no attention.png: the backbone has no CLS token (cls_token=false), so no CLS attention to map")
    for path in (outputs.attention_png, outputs.pca_png, outputs.spectrum_png, outputs.report_json):
        if path is not None:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
