"""iBOT masked-patch loss.

Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"; in the form used by DINOv2
(Oquab et al. 2023, ``ibot_patch_loss.py`` ``forward_masked``). For the M masked patches of the student's
global crops, gathered across the batch (row m belongs to image b(m)), with teacher targets ``P`` (M, K)
computed from the teacher's *unmasked* view of the same patches::

    CE_m   = -sum_k P[m, k] * log_softmax(s[m] / T_student)[k]
    w_m    = 1 / (number of masked patches of image b(m))          (``masks_weight``)
    L_iBOT = (1 / n_images) * sum_m w_m * CE_m

so each image with masks contributes the mean CE over its masked patches, and ``n_images`` is the
number of global-crop images (2B): images without masks count in the denominator, as in DINOv2.
DINOv2 multiplies this by ``n_global_crops`` and by ``1 / n_global_crops`` in ``ssl_meta_arch.py``; the
two cancel, so the value above is exactly DINOv2's ``ibot_loss`` before ``ibot.loss_weight``.

Centering is the same as for DINO but with its own ``center`` buffer (DINOv2 shapes it (1, 1, K); ours
is (1, K) on the flattened masked rows, and is the mean over all masked patches of all ranks).
Computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

from torch import Tensor

from dinolite.dtypes import at_least_float32
from dinolite.losses.centering import TeacherCentering
from dinolite.losses.dino_clstoken_loss import cross_entropy_with_probs


class iBOTPatchLoss(TeacherCentering):  # noqa: N801 - the paper's (and DINOv2's) spelling
    """iBOT patch loss with its own teacher center (``center`` buffer of shape (1, out_dim))."""

    def forward_masked(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks_weight: Tensor,
        n_images: int,
    ) -> Tensor:
        """Weighted cross-entropy over masked patches, normalised by the number of images.

        Args:
            student_patch_logits: (M, K) student head outputs of the masked patches.
            teacher_patch_probs: (M, K) teacher targets of the same patches.
            masks_weight: (M,) ``1 / #masked patches`` of each row's image (from the collate function).
            n_images: number of global-crop images in the local batch (2B), masked or not.
        """
        if student_patch_logits.shape != teacher_patch_probs.shape or student_patch_logits.ndim != 2:
            raise ValueError(
                f"iBOTPatchLoss: student {tuple(student_patch_logits.shape)} and teacher "
                f"{tuple(teacher_patch_probs.shape)} must both be (M, K)"
            )
        if student_patch_logits.shape[1] != self.out_dim:
            raise ValueError(f"iBOTPatchLoss: K = {student_patch_logits.shape[1]} but out_dim = {self.out_dim}")
        if masks_weight.shape != (student_patch_logits.shape[0],):
            raise ValueError(
                f"iBOTPatchLoss: masks_weight has shape {tuple(masks_weight.shape)}, expected "
                f"({student_patch_logits.shape[0]},) (one weight per masked patch)"
            )
        if n_images <= 0:
            raise ValueError(f"iBOTPatchLoss: n_images must be > 0, got {n_images}")
        per_patch = cross_entropy_with_probs(teacher_patch_probs, student_patch_logits, self.student_temp)
        return (per_patch * at_least_float32(masks_weight)).sum() / n_images

    def forward(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks_weight: Tensor,
        n_images: int,
    ) -> Tensor:
        """Same as :meth:`forward_masked`."""
        return self.forward_masked(student_patch_logits, teacher_patch_probs, masks_weight, n_images)
