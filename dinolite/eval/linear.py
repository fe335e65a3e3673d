"""Linear probing: a grid of linear classifiers trained together on frozen features.

Protocol of DINOv2 (Oquab et al. 2023, ``dinov2/eval/linear.py``): every combination of
- learning rate in ``DINOV2_LEARNING_RATES``, scaled by ``global_batch / 256``,
- the CLS tokens of the last 1 or last 4 blocks (concatenated),
- with or without the average-pooled patch tokens of the last block appended,
is a separate ``nn.Linear`` (weights ~ N(0, 0.01^2), bias 0) trained with SGD (momentum 0.9, no weight
decay) under a cosine schedule from the scaled lr to 0, all from ONE backbone pass per batch. The head
kept is the best one on a held-out part of train (or on val when asked); its val top-1 is reported.

Per-image features use one layout for every head, so cached and online modes share the heads:
``[cls_{L-n+1}, ..., cls_L, mean(patch_L)]`` with ``n = min(4, depth)`` -> ``(n + 1) * D`` values.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

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
from dinolite.eval.datasets import (
    IndexFilter,
    build_labelled_dataset,
    check_class_folders,
    check_labels,
    check_source,
)
from dinolite.eval.features import extract_features
from dinolite.eval.transforms import (
    build_eval_transform,
    build_linear_train_transform,
    default_resize_size,
)

DINOV2_LEARNING_RATES: tuple[float, ...] = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
LR_REFERENCE_BATCH = 256
HELDOUT_BUCKETS = 10_000


@dataclass(frozen=True)
class HeadSpec:
    lr: float  # before batch-size scaling
    n_blocks: int  # CLS tokens of the last n blocks
    avgpool: bool  # append the mean of the last block's patch tokens


def head_grid(learning_rates: Sequence[float], n_blocks: Sequence[int], avgpool: Sequence[bool]) -> list[HeadSpec]:
    return [HeadSpec(lr, n, a) for n, a, lr in itertools.product(n_blocks, avgpool, learning_rates)]


def probe_features(backbone: nn.Module, images: torch.Tensor, n_last_blocks: int) -> torch.Tensor:
    """``[cls_{L-n+1}, ..., cls_L, mean(patch_L)]`` of each image, shape ``(B, (n + 1) * D)``."""
    layers = backbone.get_intermediate_layers(images, n=n_last_blocks, return_class_token=True, norm=True)
    return torch.cat([cls for _, cls in layers] + [layers[-1][0].mean(dim=1)], dim=1).float()


def head_input(features: torch.Tensor, spec: HeadSpec, embed_dim: int, n_available: int) -> torch.Tensor:
    """Slice the columns a head reads from the shared feature layout."""
    if not 1 <= spec.n_blocks <= n_available:
        raise ValueError(f"n_blocks={spec.n_blocks} but features hold the CLS of {n_available} blocks")
    cls = features[:, (n_available - spec.n_blocks) * embed_dim : n_available * embed_dim]
    if not spec.avgpool:
        return cls
    return torch.cat([cls, features[:, n_available * embed_dim : (n_available + 1) * embed_dim]], dim=1)


class LinearHeadGrid(nn.Module):
    """One ``nn.Linear`` per :class:`HeadSpec`, all reading the same feature batch."""

    def __init__(self, specs: Sequence[HeadSpec], embed_dim: int, n_available: int, num_classes: int):
        super().__init__()
        self.specs = list(specs)
        self.embed_dim, self.n_available = embed_dim, n_available
        self.heads = nn.ModuleList()
        for spec in self.specs:
            in_dim = (spec.n_blocks + int(spec.avgpool)) * embed_dim
            head = nn.Linear(in_dim, num_classes)
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            self.heads.append(head)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [h(head_input(features, s, self.embed_dim, self.n_available)) for h, s in zip(self.heads, self.specs)]


def build_optimizer(
    grid: LinearHeadGrid, global_batch_size: int, total_iterations: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (momentum 0.9, wd 0), lr_i = lr * global_batch / 256 per head, cosine decay to 0."""
    groups = [
        {"params": head.parameters(), "lr": spec.lr * global_batch_size / LR_REFERENCE_BATCH}
        for head, spec in zip(grid.heads, grid.specs)
    ]
    optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9, weight_decay=0.0)
    cosine = lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total_iterations) / total_iterations))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def train_grid(
    grid: LinearHeadGrid,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    iterations: int,
    global_batch_size: int,
) -> list[float]:
    """Train every head for ``iterations`` steps on ``(features, labels)`` batches; returns the loss curve.

    The total loss is the sum of the heads' cross-entropies; heads share no parameters, so each head's
    gradient is that of its own loss.
    """
    optimizer, scheduler = build_optimizer(grid, global_batch_size, iterations)
    grid.train()
    losses = []
    for _ in range(iterations):
        features, labels = next(batches)
        loss = sum(F.cross_entropy(logits, labels) for logits in grid(features))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()) / len(grid.heads))
    grid.eval()
    return losses


def cached_batches(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled minibatches (a new permutation each epoch) of in-memory features."""
    n = features.shape[0]
    while True:
        order = torch.randperm(n, generator=generator).to(features.device)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start : start + batch_size]
            yield features[idx], labels[idx]


@torch.no_grad()
def grid_top1(grid: LinearHeadGrid, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> list[float]:
    """Top-1 accuracy (%) of every head."""
    correct = torch.zeros(len(grid.heads), dtype=torch.long)
    for start in range(0, features.shape[0], batch_size):
        chunk, target = features[start : start + batch_size], labels[start : start + batch_size]
        for i, logits in enumerate(grid(chunk)):
            correct[i] += int((logits.argmax(dim=1) == target).sum())
    return (100.0 * correct.double() / max(features.shape[0], 1)).tolist()


def heldout_mask(indices: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Deterministic held-out membership from the sample index alone (works for streamed data).

    A multiplicative hash spreads consecutive indices (and class-sorted folders) over the buckets.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--heldout-fraction must be in [0, 1), got {fraction}")
    buckets = (indices.long() * 2654435761 + seed * 97531) % HELDOUT_BUCKETS
    return buckets < int(round(fraction * HELDOUT_BUCKETS))


@dataclass
class ProbeResult:
    specs: list[HeadSpec]
    selection_top1: list[float]  # on the held-out split, or on val
    val_top1: list[float]
    best: int
    losses: list[float]

    def to_json(self, selected_on: str) -> dict:
        best = self.specs[self.best]
        return {
            "top1": self.val_top1[self.best],
            "best": {"lr": best.lr, "n_blocks": best.n_blocks, "avgpool": best.avgpool},
            "selected_on": selected_on,
            "grid": [
                {**dataclasses.asdict(s), "selection_top1": sel, "val_top1": val}
                for s, sel, val in zip(self.specs, self.selection_top1, self.val_top1)
            ],
            "final_loss": self.losses[-1] if self.losses else None,
        }


def select_best(grid: LinearHeadGrid, selection_features: torch.Tensor, selection_labels: torch.Tensor) -> tuple[int, list[float]]:
    """Index of the head with the highest top-1 on the selection set (first one on ties)."""
    scores = grid_top1(grid, selection_features, selection_labels)
    return max(range(len(scores)), key=lambda i: (scores[i], -i)), scores


def linear_probe_cached(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    train_indices: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    embed_dim: int,
    n_available: int,
    num_classes: int,
    specs: Sequence[HeadSpec],
    epochs: int = 10,
    batch_size: int = 128,
    world_size: int = 1,
    heldout_fraction: float = 0.1,
    select_on: str = "heldout",
    seed: int = 0,
) -> ProbeResult:
    """Train the grid on cached features; pick the best head on held-out train (or val); score on val.

    Every rank holds all features and trains identical heads (same seed), so no gradient exchange is
    needed; ``world_size`` only enters the lr scaling, as the global batch would in DINOv2.
    """
    if select_on not in ("heldout", "val"):
        raise ValueError(f"--select-on must be heldout or val, got {select_on!r}")
    held = heldout_mask(train_indices, heldout_fraction if select_on == "heldout" else 0.0, seed)
    fit_x, fit_y = train_features[~held], train_labels[~held]
    if fit_x.shape[0] == 0 or (select_on == "heldout" and int(held.sum()) == 0):
        raise ValueError(
            f"linear probe: {int((~held).sum())} training and {int(held.sum())} held-out samples; "
            "raise --heldout-fraction or use --select-on val"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    grid = LinearHeadGrid(specs, embed_dim, n_available, num_classes).to(train_features.device)
    batch = min(batch_size, fit_x.shape[0])
    iterations = epochs * max(fit_x.shape[0] // batch, 1)
    losses = train_grid(grid, cached_batches(fit_x, fit_y, batch, generator), iterations, batch * world_size)
    sel_x, sel_y = (train_features[held], train_labels[held]) if select_on == "heldout" else (val_features, val_labels)
    best, selection = select_best(grid, sel_x, sel_y)
    return ProbeResult(list(specs), selection, grid_top1(grid, val_features, val_labels), best, losses)


def online_batches(
    loader_factory: Callable[[int], Iterator],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    keep: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(features, labels)`` from augmented images: one backbone pass feeds every head.

    ``loader_factory(epoch)`` yields ``(images, labels, indices)``; ``keep(indices)`` masks out held-out
    samples.
    """
    for epoch in itertools.count():
        for images, labels, indices in loader_factory(epoch):
            mask = keep(torch.as_tensor(indices))
            if not bool(mask.any()):
                continue
            with torch.no_grad():
                features = feature_fn(images[mask].to(device))
            yield features, torch.as_tensor(labels)[mask].to(device)


def shuffle_buffer(items: Iterator, size: int, generator: torch.Generator) -> Iterator:
    """Approximate shuffle of a stream: keep ``size`` items, emit a random one as each new one arrives."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=generator)))
    while buffer:
        yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=generator)))


# --------------------------------------------------------------------------------------------------
# Command line: dinolite-linear / python -m dinolite.eval.linear / python eval/linear.py
# --------------------------------------------------------------------------------------------------

CLI_DESCRIPTION = """Linear probe on frozen features: a grid of lr x {last 1, last 4 blocks' CLS} x {+/- avgpool} heads
trained together (DINOv2 protocol), the best head chosen on held-out train (or on val).

    dinolite-linear --backbone output/demo --train DATA/train --val DATA/val --output linear.json

--mode cached extracts features once (eval transform) and trains on them: fast, and the only mode
under torchrun. --mode online runs the backbone on augmented images every step (random-resized crop +
flip), one pass per batch for all heads; single process.
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True, help="training set (folder or shard patterns)")
    parser.add_argument("--val", nargs="+", required=True, help="evaluation set (folder or shard patterns)")
    parser.add_argument("--mode", choices=("cached", "online"), default="cached")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(DINOV2_LEARNING_RATES))
    parser.add_argument("--n-blocks", type=int, nargs="+", default=[1, 4], help="CLS of the last n blocks")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--probe-batch-size", type=int, default=128, help="per-rank batch of the linear heads")
    parser.add_argument("--epoch-length", type=int, default=None, help="online mode: steps per epoch (default: len(train)/batch)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--select-on", choices=("heldout", "val"), default="heldout")
    parser.add_argument("--num-classes", type=int, default=None, help="default: largest train label + 1")
    add_common_args(parser)
    add_transform_args(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("train", "val"):
        check_source(getattr(args, name), f"--{name}")
    check_class_folders(args.train, args.val)
    ctx = setup(args)
    depth = int(ctx.backbone.n_blocks)
    n_available = min(max(args.n_blocks), depth)
    if max(args.n_blocks) > depth:
        raise SystemExit(f"error: --n-blocks {max(args.n_blocks)} but the backbone has {depth} blocks")
    if args.mode == "online" and ctx.world_size > 1:
        raise SystemExit("error: --mode online runs in one process; use --mode cached under torchrun/srun")
    embed_dim = int(ctx.backbone.embed_dim)
    specs = head_grid(args.learning_rates, args.n_blocks, [False, True])
    feature_fn = functools.partial(probe_features, ctx.backbone, n_last_blocks=n_available)
    resize = args.resize_size or default_resize_size(ctx.crop_size)
    transform = build_eval_transform(ctx.crop_size, resize, ctx.mean, ctx.std, patch_size=ctx.patch_size)
    desc = {"crop": ctx.crop_size, "resize": resize, "mean": ctx.mean, "std": ctx.std}
    common = dict(transform=transform, transform_desc=desc, model_fn=feature_fn, kind=f"probe{n_available}")

    val = features_for(ctx, args, name="val", source=args.val, **common)
    if args.mode == "cached":
        train = features_for(ctx, args, name="train", source=args.train, **common)
        num_classes = args.num_classes or int(train.labels.max()) + 1
        check_labels(train.labels, num_classes, f"--train {' '.join(args.train)}")
        check_labels(val.labels, num_classes, f"--val {' '.join(args.val)}")
        result = linear_probe_cached(
            train.features.to(ctx.device), train.labels.to(ctx.device), train.indices,
            val.features.to(ctx.device), val.labels.to(ctx.device),
            embed_dim=embed_dim, n_available=n_available, num_classes=num_classes, specs=specs,
            epochs=args.epochs, batch_size=args.probe_batch_size, world_size=ctx.world_size,
            heldout_fraction=args.heldout_fraction, select_on=args.select_on, seed=args.seed,
        )
    else:
        result = _online(args, ctx, specs, feature_fn, transform, val, embed_dim, n_available)

    out = result.to_json(args.select_on)
    out.update(backbone=str(args.backbone), mode=args.mode, epochs=args.epochs, crop_size=ctx.crop_size)
    if ctx.is_main:
        rows = [(f"{g['lr']:g}", g["n_blocks"], g["avgpool"], g["selection_top1"], g["val_top1"]) for g in out["grid"]]
        print(format_table(("lr", "blocks", "avgpool", f"{args.select_on} top-1 %", "val top-1 %"), rows))
        b = out["best"]
        print(f"best (on {args.select_on}): lr={b['lr']} n_blocks={b['n_blocks']} avgpool={b['avgpool']} -> val top-1 {out['top1']:.2f}%")
    write_results(args.output, out, ctx.is_main)
    finish(ctx)
    return 0


def _online(args, ctx, specs, feature_fn, eval_transform, val, embed_dim, n_available) -> ProbeResult:
    train_transform = build_linear_train_transform(ctx.crop_size, ctx.mean, ctx.std, patch_size=ctx.patch_size)
    train_set = build_labelled_dataset(args.train, train_transform, 0, 1, option="--train")
    fraction = args.heldout_fraction if args.select_on == "heldout" else 0.0
    is_held = lambda idx: heldout_mask(torch.as_tensor(idx), fraction, args.seed)  # noqa: E731
    num_classes = args.num_classes or int(val.labels.max()) + 1
    generator = torch.Generator().manual_seed(args.seed)

    def loader(epoch: int):
        items = shuffle_buffer(iter(train_set), 1000, generator)
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == args.probe_batch_size:
                yield torch.utils.data.default_collate(batch)
                batch = []

    if args.epoch_length is None:
        count = sum(1 for _ in DataLoader(build_labelled_dataset(args.train, None, 0, 1, "--train"), batch_size=None))
        args.epoch_length = max(count // args.probe_batch_size, 1)
    torch.manual_seed(args.seed)
    grid = LinearHeadGrid(specs, embed_dim, n_available, num_classes).to(ctx.device)
    batches = online_batches(loader, feature_fn, lambda idx: ~is_held(idx), ctx.device)
    losses = train_grid(grid, batches, args.epochs * args.epoch_length, args.probe_batch_size)
    if args.select_on == "heldout":
        held_set = IndexFilter(build_labelled_dataset(args.train, eval_transform, 0, 1, "--train"), lambda i: bool(is_held(i)))
        held = extract_features(feature_fn, held_set, batch_size=args.batch_size, device=ctx.device, progress=False)
        sel_x, sel_y = held.features.to(ctx.device), held.labels.to(ctx.device)
    else:
        sel_x, sel_y = val.features.to(ctx.device), val.labels.to(ctx.device)
    check_labels(val.labels, num_classes, f"--val {' '.join(args.val)}")
    best, selection = select_best(grid, sel_x, sel_y)
    val_top1 = grid_top1(grid, val.features.to(ctx.device), val.labels.to(ctx.device))
    return ProbeResult(list(specs), selection, val_top1, best, losses)


if __name__ == "__main__":
    sys.exit(main())
