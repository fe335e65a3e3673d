"""Weighted k-nearest-neighbour classification on frozen features (the DINO / DINOv2 kNN protocol).

Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance Discrimination"), as used by
Caron et al. 2021 (DINO) and Oquab et al. 2023 (DINOv2): features are L2-normalised, each test sample
retrieves its k most cosine-similar training samples, and neighbour j votes for its class with weight

    w_j = exp(s_j / T),   s_j = <f_test, f_train_j>,   T = 0.07

The class score is the sum of the votes of its neighbours; top-1 / top-5 are read from these scores.

Similarities are computed block by block (``chunk_size`` test rows x ``train_chunk_size`` train rows),
keeping only a running top-k per test row, so memory is bounded by one block plus (test chunk x k_max)
however many training images there are (1M x 1024 features fit; the similarity matrix would not).
The vote table has one column per distinct label present (:class:`dinolite.eval.labels.ClassIndex`),
not ``max(label) + 1``, and non-finite features or a temperature that is not a positive finite number
are refused (:mod:`dinolite.eval.finite`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dinolite.eval.finite import check_finite_rows
from dinolite.eval.labels import ClassIndex

DEFAULT_KS: tuple[int, ...] = (10, 20, 100, 200)
# The DINO protocol's k (Caron et al. 2021, Sec. 4.1; DINOv2 reports every k): the headline figure is
# read at this fixed k, never at the k that happens to score best on the evaluation set.
HEADLINE_K = 20


def _check_inputs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: Optional[int],
    ks: Sequence[int],
    temperature: float,
    chunk_sizes: Sequence[int],
) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"knn: temperature must be a positive finite number, got {temperature}")
    if min(chunk_sizes) < 1:
        raise ValueError(f"knn: chunk sizes must be >= 1, got {list(chunk_sizes)}")
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
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = "0" if num_classes is None else f"[0, num_classes={num_classes})"
            raise ValueError(f"knn: {name} label {low if low < 0 else high} is outside {bound}")
    check_finite_rows(train_features, "knn: train features")
    check_finite_rows(test_features, "knn: test features")


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
    num_classes: Optional[int],
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int = 256,
    train_chunk_size: int = 65536,
    headline_k: int = HEADLINE_K,
) -> dict:
    """Weighted kNN accuracy of ``test`` against ``train`` for each k (see the module docstring).

    Features may be on any device (computation happens there) and are L2-normalised here. A k larger
    than the training set uses every training sample. Accuracies are percentages.

    ``num_classes`` bounds the labels (each must lie in ``[0, num_classes)``; None: only ``>= 0``); the vote table has
    one column per distinct label of ``train_labels`` and ``test_labels``. Votes are computed relative
    to each row's nearest neighbour, ``exp((s_j - s_1) / T)``: the same class ranking as ``exp(s_j / T)``
    (one factor per row), without overflowing to inf at small temperatures.

    ``headline_k`` is always evaluated (added to ``ks`` if missing); ``top1``/``top5`` are its figures.
    Choosing the k that scores best on the test set would tune a hyper-parameter on the test set.

    Returns ``{"top1": top-1 at headline_k, "top5": .., "k": headline_k, "per_k": {"10": {"top1": ..,
    "top5": ..}, ...}, "num_train": N, "num_test": M, "temperature": T}``.
    """
    ks = list(ks) + ([headline_k] if headline_k not in ks else [])
    _check_inputs(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes,
        ks,
        temperature,
        (chunk_size, train_chunk_size),
    )
    device = train_features.device
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float().to(device), dim=1)
    classes = ClassIndex(train_labels, test_labels)
    train_labels = classes.positions(train_labels.long().to(device), "knn: train")
    test_labels = classes.positions(test_labels.long().to(device), "knn: test")
    num_present = classes.num_classes

    ks = sorted(set(int(k) for k in ks))
    k_max = min(ks[-1], train_features.shape[0])
    top5 = min(5, num_present)
    correct1 = {k: 0 for k in ks}
    correct5 = {k: 0 for k in ks}
    for start in range(0, test_features.shape[0], chunk_size):
        chunk = test_features[start : start + chunk_size]
        targets = test_labels[start : start + chunk_size]
        sims, idx = _topk_neighbours(chunk, train_features, k_max, train_chunk_size)
        labels = train_labels[idx]
        relative = sims - sims[:, :1]  # topk sorts: column 0 is each row's largest similarity
        for k in ks:
            scores = knn_votes(relative[:, :k], labels[:, :k], num_present, temperature)
            ranked = scores.topk(top5, dim=1).indices
            hits = ranked == targets[:, None]
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(dim=1).sum())

    n = test_features.shape[0]
    per_k = {str(k): {"top1": 100.0 * correct1[k] / n, "top5": 100.0 * correct5[k] / n} for k in ks}
    return {
        "top1": per_k[str(headline_k)]["top1"],
        "top5": per_k[str(headline_k)]["top5"],
        "k": headline_k,
        "per_k": per_k,
        "num_train": int(train_features.shape[0]),
        "num_test": int(n),
        "temperature": temperature,
    }
