"""A relative position bias shared by every block (BEiT: Bao et al., 2022; SimMIM: Xie et al., 2022).

``student.pos_embed=shared_rel_pos_bias``: the backbone adds no absolute position; instead every block's
attention logits for query ``i`` and key ``j`` get ``table[index(i, j), head]`` from one learnable table of
``(2H - 1)(2W - 1) + 3`` rows (``H x W``: the trained patch grid), ``num_heads`` columns, zero at the start:

- patch ``i`` at ``(r_i, c_i)`` to patch ``j``: row ``(r_i - r_j + H - 1)(2W - 1) + (c_i - c_j + W - 1)``;
- the CLS query to any patch key: row ``D - 3``; any patch query to the CLS key: ``D - 2``; CLS to CLS:
  ``D - 1`` (``D`` = the table's rows).

That is the layout of microsoft/SimMIM ``d3e29bc`` ``models/vision_transformer.py:179-213``
(``RelativePositionBias``, ``USE_SHARED_RPB``), so its checkpoints' ``rel_pos_bias.relative_position_bias_table``
loads as it is. A smaller grid ``h x w`` (local crops, a lower resolution) reads the same table: its offsets lie
inside the trained range. The bias ``(heads, T, T)`` goes to attention as a float mask (one fused SDPA call).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn


def num_relative_distances(grid: tuple[int, int]) -> int:
    """Rows of the table for a trained ``grid`` ``(H, W)``: every 2-D offset plus the three CLS entries."""
    height, width = grid
    return (2 * height - 1) * (2 * width - 1) + 3


@lru_cache(maxsize=16)
def relative_position_index(grid: tuple[int, int], table_grid: tuple[int, int]) -> Tensor:
    """``(1 + h w, 1 + h w)`` rows of the table of a ``table_grid`` ``(H, W)`` for the tokens ``[CLS, patches]``
    of a ``grid`` ``(h, w)`` (row-major patches), as the module docstring lays them out."""
    (h, w), (H, W) = grid, table_grid
    if h > H or w > W or h < 1 or w < 1:
        raise ValueError(f"a {h}x{w} patch grid does not fit the {H}x{W} grid the relative position bias was built for")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    offsets = (rows[:, None] - rows[None, :] + H - 1) * (2 * W - 1) + (cols[:, None] - cols[None, :] + W - 1)
    size = num_relative_distances(table_grid)
    index = torch.empty(1 + h * w, 1 + h * w, dtype=torch.long)
    index[1:, 1:] = offsets
    index[0, :] = size - 3  # the CLS query to the patches
    index[:, 0] = size - 2  # the patches to the CLS key
    index[0, 0] = size - 1
    return index


class SharedRelativePositionBias(nn.Module):
    """The table (key ``relative_position_bias_table``, ``(D, heads)``) and its lookup; ``forward(grid)`` gives
    the ``(heads, 1 + h w, 1 + h w)`` bias of a ``grid`` ``(h, w)`` of patches behind one CLS token."""

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distances(self.grid), num_heads))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.relative_position_bias_table)  # the release's start: no position information at all

    def forward(self, grid: tuple[int, int]) -> Tensor:
        index = relative_position_index((int(grid[0]), int(grid[1])), self.grid)
        table = self.relative_position_bias_table
        return table[index.to(table.device)].permute(2, 0, 1)


def shared_bias_for(
    pos_embed_type: str, grid_size: int, num_heads: int, cls_token: bool, num_register_tokens: int
) -> SharedRelativePositionBias | None:
    """The backbone's bias module for ``pos_embed_type`` (None unless ``"shared_rel_pos_bias"``), which lays out
    ``[CLS, patches]`` as SimMIM's ViT does: a CLS-free encoder or registers are refused."""
    if pos_embed_type != "shared_rel_pos_bias":
        return None
    if not cls_token or num_register_tokens:
        raise ValueError(
            "pos_embed_type='shared_rel_pos_bias' lays out [CLS, patches] (SimMIM's ViT): it needs a CLS token and "
            f"no registers (cls_token={cls_token}, num_register_tokens={num_register_tokens})"
        )
    return SharedRelativePositionBias((grid_size, grid_size), num_heads)
