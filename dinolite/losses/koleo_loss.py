"""KoLeo regulariser: spread features uniformly by pushing each one away from its nearest neighbour.

Sablayrolles et al. 2019, "Spreading vectors for similarity search" (Kozachenko-Leonenko differential
entropy estimator); used by DINOv2 (Oquab et al. 2023) on the student backbone CLS features of each
global crop, weight ``dino.koleo_loss_weight`` = 0.1. With ``x_b`` the L2-normalised features (B, D)::

    d_b      = min_{c != b} || x_b - x_c ||_2
    L_KoLeo  = -(1/B) * sum_b log(d_b + eps),          eps = 1e-8

As in DINOv2 the nearest neighbour is found by the largest inner product (the same thing on the unit
sphere) and the distance is ``torch.nn.functional.pairwise_distance`` with eps 1e-8 (which adds eps to the
difference, keeping the gradient finite for duplicates). DINOv2 sums this over the two global crops;
that is the caller's business.

Departure from DINOv2: with a per-rank batch of 1 there is no other sample, DINOv2's version then
returns inf/NaN and poisons training. Ours raises ``ValueError`` for B < 2; the trainer checks
``train.batch_size_per_gpu >= 2`` whenever the KoLeo weight is positive. Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.dtypes import at_least_float32


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo loss of ``features`` (B, D), B >= 2; see the module docstring for the formula."""
    if features.ndim != 2:
        raise ValueError(f"koleo_loss: features must be (B, D), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(
            f"koleo_loss: needs at least 2 samples per rank to find a nearest neighbour, got a batch of {n}; "
            "use train.batch_size_per_gpu >= 2 or set dino.koleo_loss_weight=0"
        )
    x = F.normalize(at_least_float32(features), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        # nearest neighbour on the unit sphere = largest inner product, excluding the sample itself
        similarity = x @ x.t()
        similarity.fill_diagonal_(float("-inf"))
        nearest = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


class KoLeoLoss(nn.Module):
    """Module form of :func:`koleo_loss` (no parameters, no state)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        return koleo_loss(features, self.eps)
