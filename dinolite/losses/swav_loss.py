"""SwAV's swapped prediction loss with online Sinkhorn-Knopp codes.

Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (NeurIPS),
Sec. 3.1 and Eq. (3). Every crop ``v`` of an image has a score vector ``s_v = C^T z_v`` over ``K`` prototypes
``C`` (unit columns) from its unit-norm projection ``z_v``. The *codes* ``q_a`` of each assignment crop ``a``
(the two large crops) come from the scores of the whole global batch by Sinkhorn-Knopp (Sec. 3.1, "Online
clustering"): with ``S`` the (B_global, K) scores of crop ``a`` (the feature queue's rows first, when there
is one, so that a small batch still spreads over ``K`` prototypes),

    Q = Diag(u) exp(S^T / eps) Diag(v)     (rows: each prototype 1/K of the mass; columns: each sample 1/B)

after ``sinkhorn_iterations`` alternate row / column normalisations (eps = 0.05, 3 iterations in the
paper's ImageNet runs), then scaled so that every sample's code sums to 1. Codes carry no gradient. Each
other crop ``v != a`` predicts them:

    loss = 1 / |A| sum_{a in A} 1 / (V - 1) sum_{v != a} mean_b [ - sum_k q_a[b, k] log softmax(s_v[b] / tau)_k ]

with ``tau`` = 0.1 and ``V`` crops in all (2 large + N small). Under ``torch.distributed`` the Sinkhorn totals and
per-prototype sums are all-reduced (the release's ``distributed_sinkhorn``), so the codes are those of the
global batch; the mean over ``b`` is per rank, and the ranks' gradient average is the global one.

The Sinkhorn is :func:`dinolite.losses.centering.sinkhorn_knopp`, DINOv2's, which computes the release's
iteration at temperature ``eps``; it subtracts the global maximum score before ``exp`` (equal after the
first normalisation, and it cannot overflow in half precision) and counts the global columns by all-reducing
the row counts (the release multiplies the local count by the world size: equal for equal batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.losses.centering import sinkhorn_knopp


class SwAVLoss(nn.Module):
    """Swapped prediction of Sinkhorn codes (see the module docstring).

    Args:
        temperature: ``tau``, the prediction softmax's temperature.
        epsilon: the Sinkhorn entropy regularisation (the codes' temperature).
        sinkhorn_iterations: alternate normalisations (>= 1).
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if not temperature > 0 or not epsilon > 0:
            raise ValueError(f"SwAVLoss: temperature and epsilon must be > 0, got {temperature}, {epsilon}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"SwAVLoss: sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)

    @torch.no_grad()
    def codes(self, scores: Tensor, queue_scores: Tensor | None = None) -> Tensor:
        """Codes (B, K) of this rank's ``scores`` (B, K); ``queue_scores`` (L, K): the queue's rows, which take
        part in the Sinkhorn (their columns are normalised too) but whose codes are dropped."""
        n_rows = scores.shape[0]
        scores = scores.detach()
        if queue_scores is not None and queue_scores.numel():
            scores = torch.cat([queue_scores.detach().to(scores.dtype), scores])
        return sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations)[scores.shape[0] - n_rows :]

    def forward(
        self,
        scores: Sequence[Tensor],
        assign_crops: Sequence[int] = (0, 1),
        queue_scores: Sequence[Tensor | None] | None = None,
    ) -> dict[str, Tensor]:
        """``scores``: one (B, K) tensor per crop, prototypes' scores of the unit-norm projections;
        ``assign_crops``: the crops whose codes are predicted; ``queue_scores``: per assignment crop, the
        queue's (L, K) scores or None. Returns ``loss`` and ``codes`` (|A|, B, K)."""
        if len(scores) < 2:
            raise ValueError(f"SwAVLoss: needs at least 2 crops, got {len(scores)}")
        queue_scores = queue_scores if queue_scores is not None else [None] * len(assign_crops)
        codes, total = [], scores[0].new_zeros((), dtype=torch.float32)
        for crop, queued in zip(assign_crops, queue_scores):
            q = self.codes(scores[crop], queued)
            codes.append(q)
            subloss = sum(self.cross_entropy(q, scores[v]) for v in range(len(scores)) if v != crop)
            total = total + subloss / (len(scores) - 1)
        return {"loss": total / len(assign_crops), "codes": torch.stack(codes)}

    def cross_entropy(self, codes: Tensor, scores: Tensor) -> Tensor:
        """``mean_b - sum_k codes[b, k] log softmax(scores[b] / tau)_k``, in at least float32."""
        log_p = F.log_softmax(scores.float() / self.temperature, dim=-1)
        return -(codes.float() * log_p).sum(dim=-1).mean()
