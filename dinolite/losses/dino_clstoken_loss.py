"""DINO cross-view loss on the CLS-token head outputs.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO); used unchanged
by Oquab et al. 2023 (DINOv2). With teacher targets ``P_i`` (B, K) for global crop ``i`` (centred and
sharpened, see :mod:`dinolite.losses.centering`) and student logits ``s_j`` (B, K) for crop ``j``::

    CE(i, j) = -(1/B) * sum_b sum_k P_i[b, k] * log_softmax(s_j[b] / T_student)[k]
    L_DINO   = mean over pairs (i, j), i a teacher global crop, j any student crop with j != i

The student list is the global crops in the teacher's order followed by the local crops, so with 2
global and N local crops there are ``2 * (1 + N)`` pairs. This equals DINOv2's normalisation
(``ssl_meta_arch.py``: the global-crop term, over crops swapped so a view never predicts itself, scaled
by ``2 / (n_global_terms + n_local_terms)`` plus the local term over the same total), i.e. an unweighted
mean over the pairs. Everything is computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dinolite.dtypes import at_least_float32
from dinolite.losses.centering import TeacherCentering


def cross_entropy_with_probs(teacher_probs: Tensor, student_logits: Tensor, student_temp: float) -> Tensor:
    """Per-row ``-sum_k p[k] * log_softmax(s / T)[k]`` in fp32 (fp64 stays fp64), shape ``student_logits.shape[:-1]``.

    Rows are independent: DINO (per image) and iBOT (per masked patch) reduce them as they need.
    """
    log_probs = F.log_softmax(at_least_float32(student_logits) / student_temp, dim=-1)
    return -(at_least_float32(teacher_probs) * log_probs).sum(dim=-1)


class DINOLoss(TeacherCentering):
    """DINO CLS loss with its own teacher center (``center`` buffer of shape (1, out_dim)).

    Args:
        out_dim: number of prototypes K of the DINO head.
        student_temp: student softmax temperature (0.1 in DINO/DINOv2).
        center_momentum: EMA momentum of the center (0.9).
    """

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor]) -> Tensor:
        """Mean cross-entropy over every (teacher global crop i, student crop j != i) pair.

        Args:
            student_logits: per-crop student head outputs (B, K): the global crops in the same order as
                ``teacher_probs``, then the local crops.
            teacher_probs: per-global-crop teacher targets (B, K) (from ``softmax_center_teacher`` or
                ``sinkhorn_knopp_teacher``, split per crop).
        """
        n_teacher, n_student = len(teacher_probs), len(student_logits)
        if n_teacher == 0 or n_student < n_teacher or n_student < 2:
            raise ValueError(
                f"DINOLoss: need at least one teacher crop and a student list that starts with the teacher's "
                f"{n_teacher} global crop(s) and has at least 2 crops; got {n_teacher} teacher and {n_student} "
                "student crops"
            )
        expected = tuple(teacher_probs[0].shape)
        for name, crops in (("teacher_probs", teacher_probs), ("student_logits", student_logits)):
            for idx, crop in enumerate(crops):
                if tuple(crop.shape) != expected or crop.shape[-1] != self.out_dim:
                    raise ValueError(
                        f"DINOLoss: {name}[{idx}] has shape {tuple(crop.shape)}; every crop must be "
                        f"{expected} with K = out_dim = {self.out_dim}"
                    )
        # log_softmax of each student crop once: it is reused by every teacher crop
        log_probs = [F.log_softmax(at_least_float32(s) / self.student_temp, dim=-1) for s in student_logits]
        total = torch.zeros((), dtype=log_probs[0].dtype, device=student_logits[0].device)
        n_pairs = 0
        for i, target in enumerate(teacher_probs):
            target = at_least_float32(target)
            for j, log_p in enumerate(log_probs):
                if j == i:
                    continue
                total = total - (target * log_p).sum(dim=-1).mean()
                n_pairs += 1
        return total / n_pairs
