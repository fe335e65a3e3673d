"""Position embeddings: resampling a square grid to another patch grid (DINOv2's two modes), and the
fixed 2-D sine-cosine table of MAE / I-JEPA.

A table holds ``1 + M*M`` rows (a CLS row, then the patches: DINOv2's) or ``M*M`` (no CLS token: the
released I-JEPA encoder's); :func:`pos_embed_layout` tells the two apart from the row count alone, since
``1 + M*M`` is never a square for ``M >= 1``. The CLS row, if any, is kept; the ``M x M`` patch embeddings
are resampled bicubically to ``h x w``:

- ``offset > 0`` (DINOv2's default, 0.1): ``interpolate`` with ``scale_factor = ((h + offset) / M,
  (w + offset) / M)``; the small offset works around floating-point rounding of the output size.
- ``offset == 0``: ``interpolate`` to the exact ``size=(h, w)``, optionally ``antialias`` (DINOv2's
  register models use this mode with antialiasing).

At the trained grid (``h == w == M``) the embeddings are returned unchanged.

:func:`sincos_pos_embed_2d` is the fixed table (He et al. 2022, MAE; Assran et al. 2023, I-JEPA, whose
encoder and predictor both use it, untrained): half the channels encode the row, half the column. Which
half comes first is ``order``: ``row_first`` (dinolite's) or ``column_first`` (the released I-JEPA and MAE
code: facebookresearch/ijepa ``52c1ae9`` ``src/models/vision_transformer.py:21-48`` meshes the column
coordinate first). The two tables hold the same rows with their channel halves swapped: training from
scratch is the same up to a relabelling, but a released checkpoint's weights only fit its own order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from dinolite.dtypes import at_least_float32


def pos_embed_layout(num_positions: int) -> tuple[int, int]:
    """``(cls_rows, side)`` of a position table of ``num_positions`` rows: ``(0, M)`` for ``M*M`` rows,
    ``(1, M)`` for ``1 + M*M`` (the module docstring); :class:`ValueError` for any other count."""
    side = math.isqrt(num_positions)
    if side >= 1 and side * side == num_positions:
        return 0, side
    side = math.isqrt(num_positions - 1) if num_positions >= 1 else 0
    if side >= 1 and side * side == num_positions - 1:
        return 1, side
    raise ValueError(f"a position table of {num_positions} rows is neither M*M patch positions nor a CLS row plus M*M")


def interpolate_pos_embed(
    pos_embed: Tensor, grid_hw: tuple[int, int], offset: float = 0.1, antialias: bool = False
) -> Tensor:
    """``pos_embed (1, [1 +] M*M, D)`` -> ``(1, [1 +] h*w, D)`` for a patch grid ``grid_hw = (h, w)`` (the CLS
    row, when the table has one, unchanged)."""
    cls_rows, side = pos_embed_layout(pos_embed.shape[1])
    h, w = int(grid_hw[0]), int(grid_hw[1])  # plain ints, also when a tracer hands us tensors
    if (h, w) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :cls_rows], pos_embed[:, cls_rows:]
    grid = at_least_float32(patch_pos).reshape(1, side, side, dim).permute(0, 3, 1, 2)
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


# which coordinate the first half of a sine-cosine embedding's channels encodes (the module docstring)
SINCOS_ORDERS = ("row_first", "column_first")


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, order: str = "row_first") -> Tensor:
    """``(grid_h * grid_w, dim)`` fixed embeddings, row-major: half the channels encode the row, half the
    column (``order`` says which half first), each as ``[sin(pos * w_i), cos(pos * w_i)]`` with
    ``w_i = 10000^(-i / (dim / 4))``."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    if order not in SINCOS_ORDERS:
        raise ValueError(f"sine-cosine order must be one of {', '.join(SINCOS_ORDERS)}, got {order!r}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)

    def encode(pos: Tensor) -> Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    halves = [encode(rows), encode(cols)]
    return torch.cat(halves if order == "row_first" else halves[::-1], dim=1).float()
