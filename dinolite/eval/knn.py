"""Weighted k-nearest-neighbour classification on frozen features (the DINO / DINOv2 kNN protocol).

Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance Discrimination"), as used by
Caron et al. 2021 (DINO) and Oquab et al. 2023 (DINOv2): features are L2-normalised, each test sample
retrieves its k most cosine-similar training samples, and neighbour j votes for its class with weight

    w_j = exp(s_j / T),   s_j = <f_test, f_train_j>,   T = 0.07

The class score is the sum of the votes of its neighbours; top-1 / top-5 are read from these scores.

Similarities are computed block by block (``chunk_size`` test rows x ``train_chunk_size`` train rows),
keeping only a running top-k per test row, so memory is bounded by one block plus (test chunk x k_max)
however many training images there are (1M x 1024 features fit; the similarity matrix would not).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dinolite.cli_help import DefaultsHelpFormatter
from dinolite.eval.cli import (
    add_common_args,
    add_transform_args,
    features_for,
    finish,
    format_table,
    setup,
    write_results,
)
from dinolite.eval.datasets import check_class_folders, check_labels, check_source
from dinolite.eval.linear import probe_features
from dinolite.eval.transforms import build_eval_transform, default_resize_size

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)


def _check_inputs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int],
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"knn: features must be 2-D (N, D); got train {tuple(train_features.shape)}, test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"knn: train features have dimension {train_features.shape[1]} but test features {test_features.shape[1]}"
        )
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("knn: features and labels differ in length")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("knn: empty train or test set")
    if not ks or min(ks) < 1:
        raise ValueError(f"knn: ks must be positive integers, got {list(ks)}")
    for name, labels in (("train", train_labels), ("test", test_labels)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"knn: {name} label {int(labels.max() if labels.max() >= num_classes else labels.min())} "
                f"is outside [0, num_classes={num_classes})"
            )


def _topk_neighbours(
    test_chunk: torch.Tensor, train_features: torch.Tensor, k: int, train_chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k similarities and train indices of each row of ``test_chunk``, scanning train in blocks."""
    best_sim = test_chunk.new_full((test_chunk.shape[0], 0), float("-inf"))
    best_idx = torch.empty((test_chunk.shape[0], 0), dtype=torch.long, device=test_chunk.device)
    for start in range(0, train_features.shape[0], train_chunk_size):
        block = train_features[start : start + train_chunk_size]
        sim = test_chunk @ block.T
        block_k = min(k, block.shape[0])
        sim, idx = sim.topk(block_k, dim=1)
        # Merge the running best with this block's best; only k survive, so memory stays (rows, 2k).
        merged_sim = torch.cat([best_sim, sim], dim=1)
        merged_idx = torch.cat([best_idx, idx + start], dim=1)
        keep = min(k, merged_sim.shape[1])
        best_sim, order = merged_sim.topk(keep, dim=1)
        best_idx = merged_idx.gather(1, order)
    return best_sim, best_idx


def knn_votes(
    neighbour_sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores sum_j exp(s_j / T) * onehot(label_j) for each row; shapes (B, k), (B, k) -> (B, C)."""
    weights = (neighbour_sims / temperature).exp()
    scores = torch.zeros(neighbour_sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int = 256,
    train_chunk_size: int = 65536,
) -> dict:
    """Weighted kNN accuracy of ``test`` against ``train`` for each k (see the module docstring).

    Features may be on any device (computation happens there) and are L2-normalised here. A k larger
    than the training set uses every training sample. Accuracies are percentages.

    Returns ``{"top1": best top-1 over ks, "best_k": k, "per_k": {"10": {"top1": .., "top5": ..}, ...},
    "num_train": N, "num_test": M}``.
    """
    _check_inputs(train_features, train_labels, test_features, test_labels, num_classes, ks)
    device = train_features.device
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float().to(device), dim=1)
    train_labels = train_labels.long().to(device)
    test_labels = test_labels.long().to(device)

    ks = sorted(set(int(k) for k in ks))
    k_max = min(ks[-1], train_features.shape[0])
    top5 = min(5, num_classes)
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        chunk = test_features[start : start + chunk_size]
        targets = test_labels[start : start + chunk_size]
        sims, idx = _topk_neighbours(chunk, train_features, k_max, train_chunk_size)
        labels = train_labels[idx]
        for k in ks:
            scores = knn_votes(sims[:, :k], labels[:, :k], num_classes, temperature)
            ranked = scores.topk(top5, dim=1).indices
            hits = ranked == targets[:, None]
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(dim=1).sum())

    n = test_features.shape[0]
    per_k = {str(k): {"top1": 100.0 * correct1[k] / n, "top5": 100.0 * correct5[k] / n} for k in ks}
    best_k = max(ks, key=lambda k: (correct1[k], -k))
    return {
        "top1": per_k[str(best_k)]["top1"],
        "best_k": best_k,
        "per_k": per_k,
        "num_train": int(train_features.shape[0]),
        "num_test": int(n),
        "temperature": temperature,
    }


# --------------------------------------------------------------------------------------------------
# Command line: dinolite-knn / python -m dinolite.eval.knn / python eval/knn.py
# --------------------------------------------------------------------------------------------------

CLI_DESCRIPTION = """Weighted kNN classification on frozen CLS features (DINO protocol: k in {10,20,100,200}, T=0.07).

    dinolite-knn --backbone output/demo --train DATA/train --val DATA/val --output knn.json

--train / --val: an image folder with class subfolders, or labelled webdataset shards ("cls").
Launch with `torchrun --nproc_per_node N -m dinolite.eval.knn ...` (or under srun) to split extraction.
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True, help="training set (folder or shard patterns)")
    parser.add_argument("--val", nargs="+", required=True, help="evaluation set (folder or shard patterns)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS))
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--num-classes", type=int, default=None, help="default: largest train label + 1")
    parser.add_argument("--features", choices=("cls", "cls+avgpool"), default="cls",
                        help="cls: the DINO protocol; cls+avgpool appends the mean patch token")
    parser.add_argument("--chunk-size", type=int, default=256, help="test rows per similarity block")
    add_common_args(parser)
    add_transform_args(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_source(args.train, "--train")
    check_source(args.val, "--val")
    check_class_folders(args.train, args.val)
    ctx = setup(args)
    resize = args.resize_size or default_resize_size(ctx.crop_size)
    transform = build_eval_transform(ctx.crop_size, resize, ctx.mean, ctx.std, patch_size=ctx.patch_size)
    desc = {"crop": ctx.crop_size, "resize": resize, "mean": ctx.mean, "std": ctx.std}
    model_fn = ctx.backbone if args.features == "cls" else functools.partial(probe_features, ctx.backbone, n_last_blocks=1)
    common = dict(transform=transform, transform_desc=desc, model_fn=model_fn, kind=args.features)
    train = features_for(ctx, args, name="train", source=args.train, **common)
    val = features_for(ctx, args, name="val", source=args.val, **common)
    num_classes = args.num_classes or int(train.labels.max()) + 1
    check_labels(train.labels, num_classes, f"--train {' '.join(args.train)}")
    check_labels(val.labels, num_classes, f"--val {' '.join(args.val)}")
    results = knn_classify(
        train.features.to(ctx.device), train.labels, val.features, val.labels, num_classes,
        ks=args.ks, temperature=args.temperature, chunk_size=args.chunk_size,
    )
    results.update(backbone=str(args.backbone), features=args.features, num_classes=num_classes, crop_size=ctx.crop_size)
    if ctx.is_main:
        rows = [(k, v["top1"], v["top5"]) for k, v in results["per_k"].items()]
        print(f"kNN on {results['num_train']} train / {results['num_test']} val images, T={args.temperature}")
        print(format_table(("k", "top-1 %", "top-5 %"), rows))
        print(f"best: k={results['best_k']} top-1 {results['top1']:.2f}%")
    write_results(args.output, results, ctx.is_main)
    finish(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
