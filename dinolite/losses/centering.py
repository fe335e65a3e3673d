"""Teacher target construction shared by the DINO and iBOT losses: centering and Sinkhorn-Knopp.

Both losses turn teacher logits ``t`` (rows = samples, columns = K prototypes) into target
probabilities, with one of two ways of preventing collapse onto a single prototype:

* **EMA centering** (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"):
  ``p = softmax((t - c) / T_teacher)`` where the center ``c`` (1, K) is an exponential moving average
  of the batch mean of the teacher logits, ``c <- m * c + (1 - m) * mean_batch(t)`` (m = 0.9).
  Under ``torch.distributed`` the batch is the global batch: the sum of logits and the number of rows
  are all-reduced, so ranks with different row counts (iBOT's masked patches) weigh each row equally.
* **Sinkhorn-Knopp** (Caron et al. 2020, SwAV; used by DINOv2, Oquab et al. 2023): starting from
  ``Q = exp(t / T_teacher)^T`` (K x B_global), alternately rescale rows so every prototype carries
  mass 1/K and columns so every sample carries mass 1/B_global, then scale by B_global so that each
  sample's target is a probability vector. The global batch is the column dimension, so every sum over
  columns (the total and the per-prototype sums) is all-reduced; per-sample sums stay local.

Departures from DINOv2 (stated so users comparing runs know): we subtract the global maximum of
``t / T`` before ``exp`` (the result is identical after normalisation, and it cannot overflow), and the
EMA center uses the global mean over all rows rather than the mean of per-rank means.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import is_distributed
from dinolite.dtypes import at_least_float32


def all_reduce_(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """In-place all-reduce over the default group when distributed; a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


def global_row_mean(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the rows of ``values`` (N, K) across all ranks, and the global row count (a 1-element
    tensor, not a Python int: reading it would sync with the device and break a compiled graph).

    Returns a zero (1, K) mean when no rank has a row (the caller then skips its update).
    """
    values = at_least_float32(values)
    row_sum = values.sum(dim=0, keepdim=True)
    count = torch.tensor([values.shape[0]], dtype=torch.float64, device=values.device)
    all_reduce_(row_sum)
    all_reduce_(count)
    return row_sum / count.clamp(min=1).to(row_sum.dtype), count


def softmax_centered(logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """``softmax((logits - center) / temperature)`` over the last dimension, in fp32 (fp64 stays fp64)."""
    return F.softmax((at_least_float32(logits) - at_least_float32(center)) / temperature, dim=-1)


def sinkhorn_knopp(logits: Tensor, temperature: float, n_iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp targets for ``logits`` (B_local, K); rows of the result sum to 1.

    The distributed batch is the column dimension of ``Q``: totals and per-prototype sums are
    all-reduced, per-sample sums are local. Ranks may hold different numbers of rows (even none).
    """
    if n_iterations < 1:
        raise ValueError(f"sinkhorn_knopp: n_iterations must be >= 1, got {n_iterations}")
    if logits.ndim != 2:
        raise ValueError(f"sinkhorn_knopp: logits must be (B, K), got shape {tuple(logits.shape)}")
    scaled = at_least_float32(logits) / temperature
    n_prototypes = scaled.shape[1]
    local_max = scaled.max() if scaled.numel() else torch.tensor(float("-inf"), device=scaled.device)
    global_max = all_reduce_(local_max.reshape(1).clone(), op=dist.ReduceOp.MAX)
    n_samples = all_reduce_(torch.tensor([scaled.shape[0]], dtype=torch.float64, device=scaled.device))
    n_samples_total = float(n_samples.item())
    if n_samples_total == 0:
        return scaled.clone()

    q = torch.exp(scaled - global_max).t()  # (K, B_local)
    q /= all_reduce_(q.sum().reshape(1))
    for _ in range(n_iterations):
        # every prototype carries 1/K of the mass (sum over the global batch)
        q /= all_reduce_(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        # every sample carries 1/B_global of the mass (its own column: local)
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples_total
    q *= n_samples_total
    return q.t()


class TeacherCentering(nn.Module):
    """Holds the EMA ``center`` buffer (1, K) and builds teacher targets; base of DINO/iBOT losses.

    ``center`` is a registered buffer, so it travels in ``state_dict()`` and resumes exactly.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"out_dim must be > 0, got {out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def _check_logits(self, logits: Tensor, what: str) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.out_dim:
            raise ValueError(
                f"{type(self).__name__}.{what}: expected teacher logits of shape (N, {self.out_dim}), "
                f"got {tuple(logits.shape)}"
            )

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centred, sharpened teacher probabilities ``softmax((t - center) / teacher_temp)``."""
        self._check_logits(teacher_logits, "softmax_center_teacher")
        return softmax_centered(teacher_logits, self.center, teacher_temp)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
        """Sinkhorn-Knopp teacher probabilities (see :func:`sinkhorn_knopp`); the center is not used."""
        self._check_logits(teacher_logits, "sinkhorn_knopp_teacher")
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """``center <- m * center + (1 - m) * mean(teacher_logits)``, mean over the global batch.

        Call after :meth:`softmax_center_teacher` of the same step (the targets use the previous center,
        as in DINO). Every rank must call it (it all-reduces); with no row on any rank it is skipped.
        """
        self._check_logits(teacher_logits, "update_center")
        batch_mean, n_rows = global_row_mean(teacher_logits)
        m = self.center_momentum
        updated = torch.add(self.center * m, batch_mean.to(self.center.device), alpha=1.0 - m)
        # branchless skip (no host read of the count): torch.compile traces the step in one graph
        self.center.copy_(torch.where(n_rows > 0, updated, self.center))
