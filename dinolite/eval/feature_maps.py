"""Per-image pictures of what a backbone computes, as tensors: CLS attention maps and PCA colours of
patch features (no files, no figures; :mod:`dinolite.eval.visualize_figures` draws them).

- Attention (Caron et al. 2021, DINO, Fig. 1/3): the last block's softmax attention of the CLS token
  over the patch tokens, one map per head. CLS->CLS and CLS->register weights are dropped and the rest
  renormalised, so each head's map is a distribution over patches (sums to 1).
- Token norms (Darcet et al. 2024, "Vision Transformers Need Registers", Fig. 3): the L2 norm of each patch
  token at the last block's output, before the final LayerNorm (the LayerNorm divides each token by its
  own scale, which would erase the high-norm outliers the paper counts).
- PCA (Oquab et al. 2023, DINOv2, Fig. 1/10): PCA over the patch features of all images together; the
  first three components are mapped to RGB. With a foreground threshold, patches whose first component
  (scaled to [0, 1]) is above it are kept and a second PCA over those alone gives the colours; the
  background is black.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def _patch_grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    patch = int(model.patch_size)
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the backbone's patch size {patch}")
    return height // patch, width // patch


def _last_cls_attention(model: nn.Module, images: Tensor) -> tuple[Tensor, int]:
    """The last block's CLS attention row ``(B, heads, T)`` and the index of the first patch token in it
    (after CLS and the registers)."""
    if getattr(model, "cls_token", True) is None:
        raise ValueError(
            "the backbone has no CLS token (cls_token=false, the released I-JEPA encoder's layout), so its attention "
            "has no CLS row to map; its patch features (patch_features) still apply"
        )
    cls_row = model.get_last_selfattention(images).float()[:, :, 0]
    return cls_row, 1 + int(getattr(model, "num_register_tokens", 0))


@torch.no_grad()
def cls_attention_maps(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, heads, h, w)`` CLS->patch attention of the last block, each map renormalised to sum to 1.

    ``images`` are normalised float ``(B, 3, H, W)`` with H, W multiples of the patch size.
    """
    h, w = _patch_grid(model, images)
    cls_row, first_patch = _last_cls_attention(model, images)
    cls_to_patches = cls_row[..., first_patch:]
    if cls_to_patches.shape[-1] != h * w:
        raise ValueError(f"attention covers {cls_to_patches.shape[-1]} patch tokens, expected {h}x{w}")
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
    return cls_to_patches.reshape(*cls_to_patches.shape[:2], h, w)


@torch.no_grad()
def cls_attention_shares(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, heads, 3)``: the share of the last block's CLS attention on the CLS token itself, on the register
    tokens and on the patch tokens (each row sums to 1; the register share is 0 without registers).

    With registers a ViT can send its CLS attention to them instead of to a few patch tokens (Darcet et
    al. 2024, Sec. 3); :func:`cls_attention_maps` renormalises over the patches, so it cannot show that.
    """
    _patch_grid(model, images)
    cls_row, first_patch = _last_cls_attention(model, images)
    parts = (cls_row[..., :1], cls_row[..., 1:first_patch], cls_row[..., first_patch:])
    return torch.stack([part.sum(dim=-1) for part in parts], dim=-1)


@torch.no_grad()
def patch_token_norms(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, h, w)`` L2 norms of the patch tokens at the last block's output, before the final LayerNorm."""
    h, w = _patch_grid(model, images)
    tokens = model.forward_features(images)["x_prenorm"].float()
    first_patch = int(getattr(model, "num_cls_tokens", 1)) + int(getattr(model, "num_register_tokens", 0))
    patches = tokens[:, first_patch:]
    if patches.shape[1] != h * w:
        raise ValueError(f"the backbone returned {patches.shape[1]} patch tokens, expected {h}x{w}")
    return patches.norm(dim=-1).reshape(-1, h, w)


@torch.no_grad()
def patch_features(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, h, w, D)`` normalised patch tokens of the last block."""
    h, w = _patch_grid(model, images)
    tokens = model.forward_features(images)["x_norm_patchtokens"].float()
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


def _principal_components(x: Tensor, n_components: int) -> Tensor:
    """Projections ``(N, n_components)`` of the centred rows on the top principal axes.

    Each axis's sign is fixed so that its largest-magnitude projection is positive: SVD signs are
    arbitrary, and a fixed rule keeps colours stable between runs.
    """
    centred = x.double() - x.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projections = centred @ vh[:n_components].T
    if projections.shape[1] < n_components:  # fewer samples/dims than components: pad with zeros
        pad = projections.new_zeros(projections.shape[0], n_components - projections.shape[1])
        projections = torch.cat([projections, pad], dim=1)
    peak = projections.gather(0, projections.abs().argmax(dim=0, keepdim=True))
    return projections * torch.where(peak < 0, -1.0, 1.0)


def _min_max(x: Tensor) -> Tensor:
    """Scale each column to [0, 1] (constant columns become 0)."""
    low, high = x.min(dim=0).values, x.max(dim=0).values
    return (x - low) / (high - low).clamp_min(1e-12)


def pca_rgb(features: Tensor, foreground_threshold: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """PCA of patch features ``(B, h, w, D)`` -> RGB ``(B, h, w, 3)`` in [0, 1] and a foreground mask.

    Without a threshold every patch is foreground and the first three components are the colours.
    With one, the first component decides foreground (scaled value > threshold). Which end of it is
    the object is not fixed by PCA: we take the end the image border patches are *not* on, since
    objects are usually away from the border.
    """
    b, h, w, d = features.shape
    flat = features.reshape(-1, d)
    if foreground_threshold is None:
        rgb = _min_max(_principal_components(flat, 3)).float()
        return rgb.reshape(b, h, w, 3), torch.ones(b, h, w, dtype=torch.bool)
    if not 0.0 <= foreground_threshold <= 1.0:
        raise ValueError(f"--foreground-threshold must be in [0, 1], got {foreground_threshold}")
    first = _min_max(_principal_components(flat, 1))[:, 0].reshape(b, h, w)
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    if first[:, border].mean() > first.mean():
        first = 1.0 - first
    foreground = first > foreground_threshold
    rgb = torch.zeros(b * h * w, 3)
    mask = foreground.reshape(-1)
    if int(mask.sum()) >= 2:
        rgb[mask] = _min_max(_principal_components(flat[mask], 3)).float()
    return rgb.reshape(b, h, w, 3), foreground
