"""The shared relative position bias (student.pos_embed=shared_rel_pos_bias, SimMIM's ViT)."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.attention import explicit_attention
from dinolite.models.rel_pos_bias import SharedRelativePositionBias, num_relative_distances, relative_position_index
from dinolite.models.vision_transformer import DinoVisionTransformer


def _shared_bias_vit(**overrides: object) -> DinoVisionTransformer:
    """A 16 px ViT (4 x 4 patches of 4 px, width 32, 2 heads, 2 blocks) with the shared relative bias."""
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, attention="sdpa")
    return DinoVisionTransformer(**{**kwargs, "pos_embed_type": "shared_rel_pos_bias", **overrides})


def test_the_table_has_a_row_per_2d_offset_plus_three_cls_rows() -> None:
    assert num_relative_distances((8, 8)) == 15 * 15 + 3
    assert num_relative_distances((14, 14)) == 732  # ViT-B/16 at 224: BEiT / SimMIM's 732 rows


def test_the_index_by_hand_on_a_2x3_grid() -> None:
    """Patch (r, c) query to patch (r', c') key reads row (r - r' + 1) * 5 + (c - c' + 2) of a 2x3 table (18
    rows); the CLS query reads 15, the CLS key 16, CLS to CLS 17."""
    index = relative_position_index((2, 3), (2, 3))
    cells = [(r, c) for r in range(2) for c in range(3)]
    for i, (r, c) in enumerate(cells, start=1):
        for j, (r2, c2) in enumerate(cells, start=1):
            assert int(index[i, j]) == (r - r2 + 1) * 5 + (c - c2 + 2)
    assert index[0, 1:].tolist() == [15] * 6
    assert index[1:, 0].tolist() == [16] * 6
    assert int(index[0, 0]) == 17
    # equal offsets share a row: (0,0)->(1,1) and (0,1)->(1,2)
    assert int(index[1, 5]) == int(index[2, 6])


def test_a_smaller_grid_reads_the_same_offsets_and_a_larger_one_is_refused() -> None:
    big, small = relative_position_index((4, 4), (4, 4)), relative_position_index((2, 2), (4, 4))
    # the 2x2 grid's patch (1,1) to (0,0) is the 4x4 grid's patch (1,1) to (0,0)
    assert int(small[4, 1]) == int(big[1 + 5, 1])
    with pytest.raises(ValueError, match="5x4 patch grid does not fit the 4x4 grid"):
        relative_position_index((5, 4), (4, 4))


def test_the_bias_is_the_table_looked_up_per_head() -> None:
    bias_module = SharedRelativePositionBias((3, 3), num_heads=2)
    assert torch.count_nonzero(bias_module.relative_position_bias_table) == 0  # the release starts at zero
    with torch.no_grad():
        bias_module.relative_position_bias_table.normal_()
    bias = bias_module((3, 3))
    index = relative_position_index((3, 3), (3, 3))
    assert bias.shape == (2, 10, 10)
    for head in range(2):
        assert torch.equal(bias[head], bias_module.relative_position_bias_table[:, head][index])


def test_the_backbone_adds_the_bias_in_every_block_through_sdpa() -> None:
    """The fused attention (SDPA with the bias as a float mask) equals the explicit formula with the bias added
    to the logits, and a non-zero table changes the features (no absolute table: pos_embed stays zero, frozen)."""
    torch.manual_seed(0)
    model = _shared_bias_vit().eval()
    assert not model.pos_embed.requires_grad and torch.count_nonzero(model.pos_embed) == 0
    images = torch.randn(2, 3, 16, 16)
    before = model.forward_features(images)["x_norm_patchtokens"]
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
    tokens, bias = model.prepare_tokens_with_masks(images), model.position_bias(images)
    block = model.blocks[0]
    q, k, v = (t.transpose(1, 2) for t in block.attn._split_heads(block.norm1(tokens)).unbind(0))
    explicit, _ = explicit_attention(q, k, v, bias)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(model.forward_features(images)["x_norm_patchtokens"], before, atol=1e-4)
    weights = model.get_last_selfattention(images)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 17))


def test_the_bias_needs_the_cls_token_and_no_registers() -> None:
    with pytest.raises(ValueError, match="needs a CLS token and no registers"):
        _shared_bias_vit(num_register_tokens=1)


def test_crops_of_two_sizes_with_stochastic_depth_train_the_table_under_bf16_autocast() -> None:
    """Global and smaller local crops in one pass (each its own bias from the same table), DINOv2's batch-subset
    stochastic depth (the bias is per token pair, so a subset of the batch takes it as it is) and bf16 autocast:
    the table gets a finite, non-zero gradient; a grid larger than the trained one is refused."""
    torch.manual_seed(0)
    model = _shared_bias_vit(drop_path_rate=0.5).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model.forward_features_list([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8)])
    assert [tuple(o["x_norm_patchtokens"].shape) for o in outputs] == [(4, 16, 32), (4, 4, 32)]
    sum(o["x_norm_patchtokens"].float().pow(2).sum() for o in outputs).backward()
    grad = model.rel_pos_bias.relative_position_bias_table.grad
    assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().max()) > 0
    with pytest.raises(ValueError, match="5x5 patch grid does not fit the 4x4 grid"):
        model.forward_features(torch.randn(1, 3, 20, 20))
