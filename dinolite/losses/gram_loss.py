"""Gram anchoring: keep the patch-to-patch similarity structure of the student close to a frozen teacher's.

Siméoni et al. 2025, "DINOv3" (Sec. 4, "Gram anchoring"). DINOv3 observes that over long training the
global features keep improving while the dense (patch) features lose their locality; it repairs them by
matching the Gram matrix of the student's patch features to that of an earlier model, the *Gram teacher*.
With ``X_S, X_G`` the (N, D) patch features (before any head) of one image from the student and the Gram
teacher, and ``n(.)`` row-wise L2 normalisation::

    G_S = n(X_S) n(X_S)^T        G_G = n(X_G) n(X_G)^T        (N x N cosine similarities)
    L_Gram = || G_S - G_G ||_F^2 / N^2      averaged over the images           (img_level=True)

Only the *structure* of the features is constrained (their pairwise similarities), not the features
themselves, so the student's features may move while their locality is kept.

Options, with the default every released DINOv3 config uses (``gram`` section of
``ssl_default_config.yaml``; the module then computes exactly the released ``GramLoss``):

- ``normalize`` (``gram.normalized``, true): L2-normalise each patch feature first (cosine Gram matrix);
  false uses raw inner products.
- ``img_level`` (``gram.img_level``): true: one N x N matrix per image, the mean over the (B, N, N) entries
  (the ViT-7B Gram-anchoring and high-resolution recipes); false (the default config's value): the local
  batch's patches are flattened to (B N, D) and one (B N) x (B N) matrix compares every patch with every
  patch of every image. A 2-D input (patches already selected, e.g. only the masked ones) is always
  batch-level.
- ``remove_neg`` (false): zero the negative similarities of both matrices before the MSE. The released
  ``GramLoss`` constructor defaults to true, but no released config leaves it at that: every one sets false.
- ``remove_only_teacher_neg`` (false): zero the teacher's negative similarities. The release also intends to
  zero the student's where both are negative, but it tests the teacher's matrix after clamping it, so the
  student's similarities are never changed; this module does the same (matching the released values).
  Exclusive with ``remove_neg``.

The similarities and the MSE are computed in at least float32 (the release casts to float32; a float64 input
stays float64 here). The loss has no parameters and no state.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.dtypes import at_least_float32


def gram_matrix(features: Tensor, normalize: bool = True, img_level: bool = True) -> Tensor:
    """Patch-to-patch similarities: (B, N, D) -> (B, N, N) per image, or (B N, B N) for the batch when
    ``img_level`` is false (a 2-D (M, D) input gives (M, M)); L2-normalised rows when ``normalize``."""
    if features.ndim not in (2, 3):
        raise ValueError(f"gram_matrix: features must be (B, N, D) or (M, D), got shape {tuple(features.shape)}")
    if img_level and features.ndim != 3:
        raise ValueError(
            f"gram_matrix: img_level=True needs per-image features (B, N, D), got shape {tuple(features.shape)}"
        )
    x = at_least_float32(features)
    if normalize:
        x = F.normalize(x, dim=-1)
    if not img_level and x.ndim == 3:
        x = x.flatten(0, 1)
    return x @ x.transpose(-1, -2)


class GramLoss(nn.Module):
    """The Gram anchoring loss (see the module docstring): ``forward(student, teacher) -> scalar``.

    ``student`` and ``teacher`` are patch features of the same images on the same patch grid, (B, N, D) or,
    with ``img_level=False``, (M, D); the teacher's carry no gradient in training (it is frozen) but the
    loss does not detach them.
    """

    def __init__(
        self,
        normalize: bool = True,
        img_level: bool = True,
        remove_neg: bool = False,
        remove_only_teacher_neg: bool = False,
    ) -> None:
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError("GramLoss: remove_neg and remove_only_teacher_neg cannot both be true")
        self.normalize = normalize
        self.img_level = img_level
        self.remove_neg = remove_neg
        self.remove_only_teacher_neg = remove_only_teacher_neg

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape != teacher.shape:
            raise ValueError(
                f"GramLoss: student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                "must have the same shape (resize the teacher's patch grid to the student's first)"
            )
        student_sim = gram_matrix(student, self.normalize, self.img_level)
        teacher_sim = gram_matrix(teacher, self.normalize, self.img_level)
        if self.remove_neg or self.remove_only_teacher_neg:
            teacher_sim = teacher_sim.masked_fill(teacher_sim < 0, 0.0)
        if self.remove_neg:
            # masked_fill, as the release's in-place assignment: no gradient through the zeroed entries
            student_sim = student_sim.masked_fill(student_sim < 0, 0.0)
        return F.mse_loss(student_sim, teacher_sim.to(student_sim.dtype))

    def extra_repr(self) -> str:
        return (
            f"normalize={self.normalize}, img_level={self.img_level}, remove_neg={self.remove_neg}, "
            f"remove_only_teacher_neg={self.remove_only_teacher_neg}"
        )
