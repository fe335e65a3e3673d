"""Resampling a learned square grid of position embeddings to another patch grid (DINOv2's two modes).

The CLS position embedding is kept; the ``M x M`` patch embeddings are resampled bicubically to
``h x w``:

- ``offset > 0`` (DINOv2's default, 0.1): ``interpolate`` with ``scale_factor = ((h + offset) / M,
  (w + offset) / M)``; the small offset works around floating-point rounding of the output size.
- ``offset == 0``: ``interpolate`` to the exact ``size=(h, w)``, optionally ``antialias`` (DINOv2's
  register models use this mode with antialiasing).

At the trained grid (``h == w == M``) the embeddings are returned unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F


def interpolate_pos_embed(
    pos_embed: Tensor, grid_hw: tuple[int, int], offset: float = 0.1, antialias: bool = False
) -> Tensor:
    """``pos_embed (1, 1 + M*M, D)`` -> ``(1, 1 + h*w, D)`` for a patch grid ``grid_hw = (h, w)``."""
    n_patches = pos_embed.shape[1] - 1
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"pos_embed holds {n_patches} patch positions, not a square grid")
    h, w = int(grid_hw[0]), int(grid_hw[1])  # plain ints, also when a tracer hands us tensors
    if (h, w) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        resized = F.interpolate(
            grid, scale_factor=((h + offset) / side, (w + offset) / side), mode="bicubic", antialias=antialias
        )
    else:
        resized = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=antialias)
    if tuple(resized.shape[-2:]) != (h, w):
        raise RuntimeError(
            f"position embedding resized to {tuple(resized.shape[-2:])} instead of {(h, w)} "
            f"(interpolate_offset={offset}); use a larger offset or 0"
        )
    patch_pos = resized.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat((cls_pos, patch_pos), dim=1)
