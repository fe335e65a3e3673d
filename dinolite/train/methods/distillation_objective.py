"""DINOv2's distillation objective: a smaller student trained on a frozen teacher's DINO and iBOT targets.

Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision", Sec. 5 ("Model
distillation"): the pretraining loop of :mod:`dinolite.train.methods.dinov2_objective` with a larger,
frozen, pretrained network as the teacher; an EMA of the student kept on the side and evaluated (the
released S/B/L models are that EMA); no masking and no stochastic depth in the student. DINOv3's released
distillation (facebookresearch/dinov3, ``SSLMetaArch`` with ``distillation.enabled``) is the code of it:
the teacher's own DINO and iBOT heads give the targets, Sinkhorn-Knopp centres them, the student sees
unmasked global crops and the iBOT loss is read at the positions iBOT's mask sampler drew.

Per batch, with ``T`` the frozen teacher (backbone ``f_T`` and heads ``h_T``, ``h^p_T``) and ``S`` the
student:

- ``t_i = center(h_T(cls_T(g_i)) / teacher_temp)`` for the 2 global crops (``train.centering``);
- ``DINO = mean over pairs (i, j), j != i, of -sum_k t_i[k] log_softmax(h_S(cls_S(x_j)) / student_temp)[k]``
  over the student's 2 global and N local crops (DINOv2's pairing);
- ``iBOT``: the same cross-entropy between ``center(h^p_T(patch_T) / teacher_temp)`` and the student's
  patch-head output at the sampled positions of the global crops (1/#positions per image);
- ``KoLeo`` on the student's L2-normalised global CLS features;
- ``loss = dino.loss_weight * DINO + ibot.loss_weight * iBOT + dino.koleo_loss_weight * KoLeo``;
- after each step, the evaluated network (``teacher`` in dinolite's layout: the EMA of the student)
  moves as ``theta_E <- m * theta_E + (1 - m) * theta_S``. ``T`` never changes.

The frozen teacher is kept out of the objective's module tree: it is neither sharded, trained, moved to
train mode, nor saved in checkpoints (a ViT-g would add 4.5 GB to each); a checkpoint records its
SHA-256 instead and a resume against other teacher weights is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dinolite.train.methods.dinov2_objective import DINOv2Objective
from dinolite.train.methods.distillation_teacher import describe, teacher_fingerprint

FINGERPRINT_KEY = "distillation_teacher.sha256"


class DistillationObjective(DINOv2Objective):
    """DINOv2's objective with a frozen ``distillation_teacher`` producing the targets.

    Args:
        distillation_teacher: ``nn.ModuleDict`` with ``backbone``, ``dino_head`` and ``ibot_head`` (the
            same module as ``dino_head`` for a teacher with a shared head); frozen here.
        **kwargs: :class:`DINOv2Objective`'s (the student's backbone and heads, losses, weights,
            centering, schedules). Its ``teacher`` is the EMA of the student, the evaluated network.
    """

    mask_student_crops = False

    def __init__(self, distillation_teacher: nn.ModuleDict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        distillation_teacher.requires_grad_(False)
        distillation_teacher.eval()
        # object.__setattr__: not a submodule (see the module docstring)
        object.__setattr__(self, "distillation_teacher", distillation_teacher)
        self.teacher_sha256 = teacher_fingerprint(distillation_teacher)

    def target_network(self) -> tuple[nn.ModuleDict, str]:
        return self.distillation_teacher, "ibot_head"

    def _teacher_targets(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor, teacher_temp: float, do_ibot: bool
    ) -> dict[str, torch.Tensor]:
        # Outside the module tree, the teacher follows the batch to its device here.
        first = next(self.distillation_teacher.parameters())
        if first.device != global_crops.device:
            self.distillation_teacher.to(global_crops.device)
        return super()._teacher_targets(global_crops, mask_indices, teacher_temp, do_ibot)

    def train(self, mode: bool = True) -> DistillationObjective:
        super().train(mode)
        self.distillation_teacher.eval()  # never stochastic: the targets are the teacher's
        return self

    # ------------------------------------------------------------------ resume
    def extra_state(self) -> dict[str, torch.Tensor]:
        return {**super().extra_state(), FINGERPRINT_KEY: self.teacher_sha256.clone()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        saved = state.pop(FINGERPRINT_KEY, None)
        if saved is not None and not torch.equal(saved.to(torch.uint8).cpu(), self.teacher_sha256):
            raise ValueError(
                f"the checkpoint was trained against another teacher (SHA-256 {describe(saved)}) than "
                f"distillation.teacher_weights holds now ({describe(self.teacher_sha256)}); resume with the "
                "same teacher weights"
            )
        super().load_extra_state(state)
