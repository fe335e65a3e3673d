"""Position embeddings: identity at the trained size, orientation kept for H != W, DINOv2's interpolation
modes, tables with and without a CLS row, and the fixed 2-D sin-cos table of the masked methods."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from dinolite.models.pos_embed import interpolate_pos_embed, pos_embed_layout, sincos_pos_embed_2d
from tests.models.test_vision_transformer import tiny


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, False), (0.0, True)])
def test_pos_embed_identity_at_trained_size(offset, antialias):
    model = tiny(interpolate_offset=offset, interpolate_antialias=antialias)
    pos = model.interpolate_pos_encoding(torch.zeros(1, 17, 32), 32, 32)
    assert torch.equal(pos, model.pos_embed)


@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_pos_embed_non_square_keeps_orientation(offset):
    """Embeddings that vary along rows only must still vary along rows only after an H != W resize."""
    side, dim = 6, 4
    rows = torch.arange(side, dtype=torch.float32).repeat_interleave(side)  # value = row index
    pos = torch.cat([torch.full((1, 1, dim), 7.0), rows.view(1, side * side, 1).expand(1, -1, dim)], dim=1)
    out = interpolate_pos_embed(pos, (3, 10), offset=offset)
    assert out.shape == (1, 1 + 30, dim)
    assert torch.equal(out[:, 0], pos[:, 0])  # CLS untouched
    grid = out[0, 1:, 0].view(3, 10)
    torch.testing.assert_close(grid, grid[:, :1].expand(3, 10))  # constant along each row
    assert grid[0, 0] < grid[1, 0] < grid[2, 0]


def test_pos_embed_modes():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 16 * 16, 8)
    grid = pos[:, 1:].reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    exact = interpolate_pos_embed(pos, (6, 9), offset=0.0, antialias=False)
    ref = F.interpolate(grid, size=(6, 9), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 54, 8)
    torch.testing.assert_close(exact[:, 1:], ref)
    smooth = interpolate_pos_embed(pos, (6, 9), offset=0.0, antialias=True)
    kludge = interpolate_pos_embed(pos, (6, 9), offset=0.1)
    ref_kludge = F.interpolate(grid, scale_factor=(6.1 / 16, 9.1 / 16), mode="bicubic")
    torch.testing.assert_close(kludge[:, 1:], ref_kludge.permute(0, 2, 3, 1).reshape(1, 54, 8))
    assert not torch.allclose(smooth, exact) and not torch.allclose(kludge, exact)


def test_sincos_pos_embed_hand_values():
    table = sincos_pos_embed_2d(4, 1, 2)  # omega = [1]; channels: [sin row, cos row, sin col, cos col]
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, math.sin(1.0), math.cos(1.0)]])
    torch.testing.assert_close(table, expected)
    assert sincos_pos_embed_2d(8, 3, 3).shape == (9, 8)
    # the released I-JEPA / MAE order: the column half first, the same rows with their halves swapped
    column_first = sincos_pos_embed_2d(4, 1, 2, order="column_first")
    torch.testing.assert_close(column_first, torch.cat([expected[:, 2:], expected[:, :2]], dim=1))
    with pytest.raises(ValueError, match="order must be one of row_first, column_first, got 'col'"):
        sincos_pos_embed_2d(4, 1, 2, order="col")


def test_pos_embed_layout_tells_a_cls_row_from_none():
    """1 + M*M is never a square (M >= 1), so the row count alone says whether a table has a CLS row."""
    assert pos_embed_layout(64) == (0, 8) and pos_embed_layout(65) == (1, 8)
    assert pos_embed_layout(1) == (0, 1) and pos_embed_layout(2) == (1, 1)
    assert pos_embed_layout(197) == (1, 14) and pos_embed_layout(196) == (0, 14)
    for bad in (0, 3, 63, 66):
        with pytest.raises(ValueError, match=f"{bad} rows"):
            pos_embed_layout(bad)


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_interpolating_a_cls_free_table_resamples_the_patch_rows_alone(offset):
    torch.manual_seed(0)
    with_cls = torch.randn(1, 1 + 16, 8)
    resized = interpolate_pos_embed(with_cls, (6, 3), offset)
    torch.testing.assert_close(interpolate_pos_embed(with_cls[:, 1:], (6, 3), offset), resized[:, 1:])
    assert torch.equal(interpolate_pos_embed(with_cls[:, 1:], (4, 4), offset), with_cls[:, 1:])  # trained grid
