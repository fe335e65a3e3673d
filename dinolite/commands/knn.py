"""Weighted kNN classification on frozen features (DINO protocol: CLS, k in {10,20,100,200}, T=0.07).

The command line of ``dinolite-knn``; ``python -m dinolite.commands.knn`` and, from a clone,
``python eval/knn.py`` run the same :func:`main`.

    dinolite-knn --backbone output/demo --train DATA/train --val DATA/val --output knn.json

Every k is reported; the headline top-1 is the one at k=20 (the DINO protocol), never the best k on
the evaluation set.

``--train`` / ``--val``: an image folder with class subfolders, or labelled webdataset shards (``cls``).
Launch with ``torchrun --nproc_per_node N -m dinolite.commands.knn ...`` (or under ``srun``) to split extraction.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from dinolite.cli import make_parser, positive_float, positive_int
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
    write_results,
)
from dinolite.eval.few_shot import (
    add_few_shot_args,
    few_shot_description,
)
from dinolite.eval.knn import DEFAULT_KS, HEADLINE_K, knn_classify
from dinolite.eval.linear import probe_features

FEATURE_KINDS = ("cls", "avgpool", "cls+avgpool")


def avgpool_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean of the last block's final-norm patch tokens (no CLS, no register tokens), ``(B, D)``."""
    (patches,) = backbone.get_intermediate_layers(images, n=1, norm=True)
    return patches.mean(dim=1).float()


def feature_fn(backbone: nn.Module, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> (B, F)`` features of ``kind`` (one of :data:`FEATURE_KINDS`)."""
    if kind == "cls":
        return backbone
    if kind == "avgpool":
        return functools.partial(avgpool_features, backbone)
    if kind == "cls+avgpool":
        return functools.partial(probe_features, backbone, n_last_blocks=1)
    raise ValueError(f"--features {kind!r}: expected one of {', '.join(FEATURE_KINDS)}")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("--train", nargs="+", required=True, help="training set (folder or shard patterns)")
    parser.add_argument("--val", nargs="+", required=True, help="evaluation set (folder or shard patterns)")
    parser.add_argument("--ks", type=positive_int, nargs="+", default=list(DEFAULT_KS), help="every k is reported")
    parser.add_argument(
        "--headline-k",
        type=positive_int,
        default=HEADLINE_K,
        help="k of the headline top-1 (fixed in advance, as in DINO; always evaluated)",
    )
    parser.add_argument("--temperature", type=positive_float, default=0.07, help="vote weight exp(sim / T)")
    add_num_classes_arg(parser)
    parser.add_argument(
        "--features",
        choices=FEATURE_KINDS,
        default="cls",
        help="cls: the DINO protocol; avgpool: the mean patch token alone (I-JEPA's protocol, for methods "
        "that train no CLS objective); cls+avgpool: both, concatenated",
    )
    parser.add_argument("--chunk-size", type=positive_int, default=256, help="test rows per similarity block")
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
    transform, desc = eval_transform_for(ctx, args)
    common = dict(
        transform=transform, transform_desc=desc, model_fn=feature_fn(ctx.backbone, args.features), kind=args.features
    )
    train = features_for(ctx, args, name="train", source=args.train, **common)
    val = features_for(ctx, args, name="val", source=args.val, **common)
    num_classes = checked_num_classes(train, val, args)
    few_shot = few_shot_description(args.shots, args.train_fraction, args.few_shot_seed)
    train = few_shot_subset(train, args)
    results = knn_classify(
        train.features.to(ctx.device),
        train.labels,
        val.features,
        val.labels,
        args.num_classes,  # a bound when given; the vote table is sized by the labels present
        ks=args.ks,
        temperature=args.temperature,
        chunk_size=args.chunk_size,
        headline_k=args.headline_k,
    )
    results.update(
        backbone=str(args.backbone),
        features=args.features,
        num_classes=num_classes,
        crop_size=ctx.crop_size,
        few_shot=few_shot,
    )
    if ctx.is_main:
        rows = [(k, v["top1"], v["top5"]) for k, v in results["per_k"].items()]
        print(f"kNN on {results['num_train']} train / {results['num_test']} val images, T={args.temperature}")
        print(format_table(("k", "top-1 %", "top-5 %"), rows))
        print(f"top-1 {results['top1']:.2f}% (k={results['k']}, the DINO protocol's fixed k; all k above)")
    write_results(args.output, results, ctx.is_main)
    finish(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
