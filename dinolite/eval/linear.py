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

Heads have one output per distinct label present (:class:`dinolite.eval.labels.ClassIndex`), whatever
the label values; non-finite features, learning rates or trained heads are refused
(:mod:`dinolite.eval.finite`), so a broken backbone cannot report a chance-level accuracy as a result.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dinolite.eval.finite import NonFiniteError, check_finite_rows, non_finite_tensors
from dinolite.eval.labels import ClassIndex
from dinolite.progress import progress_bar

DINOV2_LEARNING_RATES: tuple[float, ...] = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
LR_REFERENCE_BATCH = 256
HELDOUT_BUCKETS = 10_000


@dataclass(frozen=True)
class HeadSpec:
    lr: float  # before batch-size scaling
    n_blocks: int  # CLS tokens of the last n blocks
    avgpool: bool  # append the mean of the last block's patch tokens


def head_grid(learning_rates: Sequence[float], n_blocks: Sequence[int], avgpool: Sequence[bool]) -> list[HeadSpec]:
    bad_lrs = [lr for lr in learning_rates if not (math.isfinite(lr) and lr > 0)]
    if not learning_rates or bad_lrs:
        raise ValueError(f"--learning-rates must be positive finite numbers, got {list(learning_rates)}")
    if not n_blocks or min(n_blocks) < 1:
        raise ValueError(f"--n-blocks must be positive integers, got {list(n_blocks)}")
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
    progress: bool = False,
) -> list[float]:
    """Train every head for ``iterations`` steps on ``(features, labels)`` batches; returns the loss curve.

    The total loss is the sum of the heads' cross-entropies; heads share no parameters, so each head's
    gradient is that of its own loss.
    """
    if iterations < 1:
        raise ValueError(f"linear probe: {iterations} training steps; --epochs and --epoch-length must be >= 1")
    optimizer, scheduler = build_optimizer(grid, global_batch_size, iterations)
    grid.train()
    losses = []
    for _ in progress_bar(range(iterations), total=iterations, desc="linear heads", enabled=progress):
        features, labels = next(batches)
        loss = sum(F.cross_entropy(logits, labels) for logits in grid(features))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()) / len(grid.heads))
    grid.eval()
    check_finite_heads(grid)
    return losses


def check_finite_heads(grid: LinearHeadGrid) -> None:
    """Raise :class:`NonFiniteError` naming the heads whose weights training made NaN/inf."""
    diverged = [spec for head, spec in zip(grid.heads, grid.specs) if non_finite_tensors(head)]
    if diverged:
        shown = ", ".join(f"lr={s.lr:g} n_blocks={s.n_blocks} avgpool={s.avgpool}" for s in diverged[:5])
        raise NonFiniteError(
            f"linear probe: {len(diverged)} of {len(grid.heads)} heads diverged to non-finite weights ({shown}"
            f"{', ...' if len(diverged) > 5 else ''}); lower --learning-rates"
        )


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
def grid_top1(
    grid: LinearHeadGrid, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096
) -> list[float]:
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

    def edge_warning(self) -> str | None:
        """A warning when the best head's lr is the smallest or largest of the grid (of several lrs).

        Then the accuracy may still rise beyond the grid, and the grid, not the data, chose the lr.
        """
        lrs = sorted({s.lr for s in self.specs})
        best_lr = self.specs[self.best].lr
        if len(lrs) < 2 or best_lr not in (lrs[0], lrs[-1]):
            return None
        side, beyond = ("largest", "larger") if best_lr == lrs[-1] else ("smallest", "smaller")
        return (
            f"the best learning rate {best_lr:g} is the {side} of the grid ({lrs[0]:g}..{lrs[-1]:g}): accuracy may "
            f"still improve at {beyond} rates; extend --learning-rates"
        )

    def summary_rows(self, top: int = 5) -> list[int]:
        """Indices of the ``top`` heads by selection top-1 (best first; ties keep grid order)."""
        return sorted(range(len(self.specs)), key=lambda i: (-self.selection_top1[i], i))[:top]

    def to_json(self, selected_on: str) -> dict:
        best = self.specs[self.best]
        warning = self.edge_warning()
        return {
            "top1": self.val_top1[self.best],
            "best": {"lr": best.lr, "n_blocks": best.n_blocks, "avgpool": best.avgpool},
            "selected_on": selected_on,
            "best_lr_on_grid_edge": warning is not None,
            "warnings": [warning] if warning else [],
            "grid": [
                {**dataclasses.asdict(s), "selection_top1": sel, "val_top1": val}
                for s, sel, val in zip(self.specs, self.selection_top1, self.val_top1)
            ],
            "final_loss": self.losses[-1] if self.losses else None,
        }


def select_best(
    grid: LinearHeadGrid, selection_features: torch.Tensor, selection_labels: torch.Tensor
) -> tuple[int, list[float]]:
    """Index of the head with the highest top-1 on the selection set (first one on ties)."""
    scores = grid_top1(grid, selection_features, selection_labels)
    return max(range(len(scores)), key=lambda i: (scores[i], -i)), scores


def standardize(fit: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """Z-score every feature column with the mean and std of ``fit``'s rows; ``(fit, *others)`` transformed.

    On cached features this is what the BatchNorm without affine parameters does that MAE's linear probe
    puts before its head (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", Appendix
    A.2: masked-image-modelling features differ in scale between dimensions): a feature whose variation
    rides on a large offset shared by every image gets an effective learning rate comparable to the
    others'. The statistics come from the fitting split only, so neither the held-out nor the val
    images inform them.
    """
    mean = fit.mean(dim=0, keepdim=True)
    std = fit.std(dim=0, keepdim=True).clamp_min(eps)
    return tuple((x - mean) / std for x in (fit, *others))


def linear_probe_cached(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    train_indices: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    embed_dim: int,
    n_available: int,
    num_classes: int | None,
    specs: Sequence[HeadSpec],
    epochs: int = 10,
    batch_size: int = 128,
    world_size: int = 1,
    heldout_fraction: float = 0.1,
    select_on: str = "heldout",
    seed: int = 0,
    progress: bool = False,
    standardize_features: bool = False,
) -> ProbeResult:
    """Train the grid on cached features; pick the best head on held-out train (or val); score on val.

    ``num_classes`` bounds the labels (None: only ``>= 0``); the heads have one output per distinct label of ``train_labels``
    and ``val_labels`` (monotone remapping: the accuracies are those of the original ids).

    ``standardize_features``: z-score the features with the fitting split's statistics first
    (:func:`standardize`, MAE's probe protocol).

    Every rank holds all features and trains identical heads (same seed), so no gradient exchange is
    needed; ``world_size`` only enters the lr scaling, as the global batch would in DINOv2.
    """
    if select_on not in ("heldout", "val"):
        raise ValueError(f"--select-on must be heldout or val, got {select_on!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"linear probe: epochs ({epochs}) and batch size ({batch_size}) must be >= 1")
    check_finite_rows(train_features, "linear probe: train features")
    check_finite_rows(val_features, "linear probe: val features")
    for what, labels in (("train", train_labels), ("val", val_labels)):
        low, high = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
        if low < 0 or (num_classes is not None and high >= num_classes):
            raise ValueError(f"linear probe: {what} label {low if low < 0 else high} is outside [0, {num_classes})")
    classes = ClassIndex(train_labels, val_labels)  # heads sized by the labels present, not their values
    train_labels = classes.positions(train_labels, "linear probe: train")
    val_labels = classes.positions(val_labels, "linear probe: val")
    held = heldout_mask(train_indices, heldout_fraction if select_on == "heldout" else 0.0, seed)
    fit_x, fit_y = train_features[~held], train_labels[~held]
    if standardize_features and fit_x.shape[0] > 1:
        fit_x, train_features, val_features = standardize(fit_x, train_features, val_features)
    if fit_x.shape[0] == 0 or (select_on == "heldout" and int(held.sum()) == 0):
        raise ValueError(
            f"linear probe: {int((~held).sum())} training and {int(held.sum())} held-out samples; "
            "raise --heldout-fraction or use --select-on val"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    grid = LinearHeadGrid(specs, embed_dim, n_available, classes.num_classes).to(train_features.device)
    batch = min(batch_size, fit_x.shape[0])
    iterations = epochs * max(fit_x.shape[0] // batch, 1)
    losses = train_grid(grid, cached_batches(fit_x, fit_y, batch, generator), iterations, batch * world_size, progress)
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
