"""SimMIM pixel regression: L1 on the masked pixels only.

Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling", Sec. 3.2-3.4. With ``x`` the
input image (B, C, H, W), ``y`` the head's reconstruction of the same shape and ``m`` the patch mask
(True = masked) expanded to pixels::

    L = sum_{pixels p, channels c} m_p * |y_pc - x_pc|  /  (C * sum_p m_p)

Visible pixels do not enter the loss (the paper's ablation: predicting them as well hurts).
``norm_target`` replaces ``x`` by per-patch normalised pixels, each ``patch_size x patch_size`` patch and
channel shifted to zero mean and scaled to unit variance, ``(x - mean) / sqrt(var + 1e-6)`` (the
per-patch normalisation of MAE, He et al. 2022; SimMIM reports a similar gain from its local
normalisation). fp32 inside.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def per_patch_normalise(images: Tensor, patch_size: int, eps: float = 1e-6) -> Tensor:
    """Each ``patch_size`` square of each channel of ``images (B, C, H, W)`` to zero mean, unit variance."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.float().reshape(B, C, H // p, p, W // p, p)
    mean = x.mean(dim=(3, 5), keepdim=True)
    var = x.var(dim=(3, 5), keepdim=True, unbiased=False)
    return ((x - mean) / (var + eps).sqrt()).reshape(B, C, H, W)


class SimMIMLoss(nn.Module):
    """``forward(reconstruction (B,C,H,W), images (B,C,H,W), mask (B, H/p * W/p) bool) -> loss``."""

    def __init__(self, patch_size: int, norm_target: bool = False) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"SimMIMLoss: patch_size must be >= 1, got {patch_size}")
        self.patch_size, self.norm_target = int(patch_size), bool(norm_target)

    def forward(self, reconstruction: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        if reconstruction.shape != images.shape:
            raise ValueError(
                f"SimMIMLoss: reconstruction {tuple(reconstruction.shape)} != images {tuple(images.shape)}"
            )
        B, C, H, W = images.shape
        p = self.patch_size
        if H % p or W % p or mask.shape != (B, (H // p) * (W // p)):
            raise ValueError(
                f"SimMIMLoss: mask {tuple(mask.shape)} does not match images {H}x{W} in patches of {p} "
                f"(expected ({B}, {(H // p) * (W // p)}))"
            )
        target = per_patch_normalise(images, p) if self.norm_target else images.float()
        pixel_mask = mask.reshape(B, 1, H // p, W // p).float()
        pixel_mask = pixel_mask.repeat_interleave(p, 2).repeat_interleave(p, 3)
        error = F.l1_loss(reconstruction.float(), target, reduction="none")
        return (error * pixel_mask).sum() / (pixel_mask.sum().clamp(min=1.0) * C)
