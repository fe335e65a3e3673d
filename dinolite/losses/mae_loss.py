"""MAE pixel regression: mean squared error on the masked patches only.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", Sec. 3 ("Reconstruction target").
With ``x`` the image (B, C, H, W) cut into ``L`` patches of ``p x p`` pixels, ``t_bl`` the ``p * p * C``
pixels of patch ``l`` of image ``b`` (:func:`patchify`), ``y_bl`` the decoder's prediction for it and
``m_bl`` = 1 where the patch was masked (removed from the encoder's input)::

    L = sum_{b,l} m_bl * mean_k (y_blk - t_blk)^2  /  sum_{b,l} m_bl

Each patch's error is the mean over its ``p * p * C`` values; the visible patches do not enter the loss
(the paper: computing it on visible pixels as well lowers accuracy). ``norm_pix_loss`` replaces ``t_bl``
by the patch normalised over all its pixels and channels together, ``(t - mean) / sqrt(var + 1e-6)``,
with the unbiased (``n - 1``) variance: the paper's "normalized pixels" target, as the released
``models_mae.py`` computes it (``forward_loss``, ``torch.var``'s default). fp32 inside.
"""

from __future__ import annotations

from torch import Tensor, nn

NORM_PIX_EPS = 1e-6  # the release's epsilon under the square root


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``images (B, C, H, W)`` -> ``(B, L, p * p * C)``: patches in raster order (row by row), each
    flattened row, column, channel (channel fastest), the layout of MAE's prediction head."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"patchify: images of {H}x{W} px do not split into patches of {p} px")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def normalise_patches(patches: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Each patch ``(..., K)`` to zero mean and unit (unbiased) variance over its ``K`` values."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


class MAELoss(nn.Module):
    """``forward(prediction (B, L, p*p*C), images (B, C, H, W), mask (B, L), 1/True = masked) -> loss``."""

    def __init__(self, patch_size: int, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"MAELoss: patch_size must be >= 1, got {patch_size}")
        self.patch_size, self.norm_pix_loss = int(patch_size), bool(norm_pix_loss)

    def target(self, images: Tensor) -> Tensor:
        """The regression target ``(B, L, p*p*C)`` of ``images``: raw or per-patch normalised pixels."""
        patches = patchify(images.float(), self.patch_size)
        return normalise_patches(patches) if self.norm_pix_loss else patches

    def forward(self, prediction: Tensor, images: Tensor, mask: Tensor) -> Tensor:
        target = self.target(images)
        if prediction.shape != target.shape or mask.shape != target.shape[:2]:
            raise ValueError(
                f"MAELoss: prediction {tuple(prediction.shape)} and mask {tuple(mask.shape)} do not match images "
                f"{tuple(images.shape)} in patches of {self.patch_size} px (expected {tuple(target.shape)} and "
                f"{tuple(target.shape[:2])})"
            )
        per_patch = (prediction.float() - target).pow(2).mean(dim=-1)
        weights = mask.float()
        return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)
