"""Label-efficient evaluation: a reproducible few-shot subset of the labelled training set.

MSN's headline (Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning", Sec. 5.1)
is ImageNet classification from 1, 2 or 5 labelled images per class, or from 1% of the labels. Any
backbone can be checked the same way here: ``eval/knn.py`` and ``eval/linear.py`` take ``--shots N``
(N images per class) or ``--train-fraction F`` (a fraction of each class, at least one image; the
class-stratified form of "1% of the labels", which keeps every class present) and ``--few-shot-seed``.

The subset depends only on the samples' dataset indices, their labels and the seed -- not on the order
in which features were extracted, the number of ranks or the batch size -- so a split can be redrawn
anywhere: the samples are sorted by dataset index, permuted by a generator seeded with the seed, and
each class keeps its first ``N`` (or ``max(1, round(F * n_class))``) samples in that permuted order.
"""

from __future__ import annotations

import argparse

import torch

from dinolite.cli import bounded, positive_int, seed_int

# --train-fraction: a fraction of each class, in (0, 1]
train_fraction = bounded(float, 0.0, 1.0, exclusive_minimum=True, name="train_fraction")


def add_few_shot_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("few-shot (label-efficient) evaluation: train on a labelled subset")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--shots", type=positive_int, default=None, help="labelled training images per class")
    choice.add_argument(
        "--train-fraction",
        type=train_fraction,
        default=None,
        help="fraction of each class's training images (at least one per class)",
    )
    group.add_argument("--few-shot-seed", type=seed_int, default=0, help="which subset is drawn (reproducible)")


def few_shot_indices(
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    shots: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Positions (into ``labels``/``indices``) of the few-shot subset, sorted increasingly.

    ``labels`` and ``indices`` are the per-sample class and dataset index (any order). Exactly one of
    ``shots`` (images per class; a class with fewer keeps all of them) or ``fraction`` (in (0, 1]) is given.
    """
    if (shots is None) == (fraction is None):
        raise ValueError("few-shot: give exactly one of shots (--shots) or fraction (--train-fraction)")
    if shots is not None and shots < 1:
        raise ValueError(f"--shots must be >= 1, got {shots}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    if labels.shape != indices.shape or labels.ndim != 1:
        raise ValueError(
            f"few-shot: labels {tuple(labels.shape)} and indices {tuple(indices.shape)} must be 1-D and match"
        )
    by_index = torch.argsort(indices, stable=True)
    order = by_index[torch.randperm(len(by_index), generator=torch.Generator().manual_seed(seed))]
    chosen = []
    for cls in labels.unique().tolist():
        members = order[labels[order] == cls]
        count = shots if shots is not None else max(1, round(fraction * len(members)))
        chosen.append(members[:count])
    return torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)


def few_shot_description(shots: int | None, fraction: float | None, seed: int) -> dict | None:
    """What goes into a results JSON (None when the full training set is used)."""
    if shots is None and fraction is None:
        return None
    return {"shots": shots, "train_fraction": fraction, "seed": seed}
