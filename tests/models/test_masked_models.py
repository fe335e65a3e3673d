"""The ViT's masked-encoder API (kept token indices, fixed sin-cos position embeddings); the I-JEPA
initialisations are specified in test_vit_init.py."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.pos_embed import sincos_pos_embed_2d
from dinolite.models.vision_transformer import DinoVisionTransformer
from dinolite.train.optim import get_param_groups


def _vit(**kwargs) -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, **kwargs).eval()


@pytest.mark.parametrize("registers", [0, 2])
def test_keep_all_indices_equals_the_full_forward(registers):
    vit = _vit(num_register_tokens=registers)
    x = torch.randn(3, 3, 32, 32)
    full = vit.forward_features(x)
    kept = vit.forward_features(x, keep_indices=torch.arange(16).expand(3, 16).clone())
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        assert torch.equal(full[key], kept[key])
    assert "keep_indices" not in full


def test_visible_tokens_are_encoded_without_the_dropped_ones():
    vit = _vit(num_register_tokens=1)
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 3, 5, 9, 15], [1, 2, 3, 4, 10]])
    out = vit.forward_features(x, keep_indices=keep)
    assert out["x_norm_patchtokens"].shape == (2, 5, 48)
    # reference: full token preparation, then drop the patches, then the blocks
    tokens = vit.prepare_tokens_with_masks(x)
    patches = tokens[:, 2:]
    visible = torch.stack([patches[b, keep[b]] for b in range(2)])
    ref = torch.cat([tokens[:, :2], visible], dim=1)
    for block in vit.blocks:
        ref = block(ref)
    torch.testing.assert_close(out["x_prenorm"], ref)
    # a dropped patch has no influence: changing its pixels leaves every output as it is
    x2 = x.clone()
    x2[0, :, 0:8, 8:16] += 5.0  # patch 1 of image 0, not kept there
    torch.testing.assert_close(vit.forward_features(x2, keep_indices=keep)["x_prenorm"][0], out["x_prenorm"][0])
    # the list form (several crop sizes in one pass) agrees with one call per batch
    small = torch.randn(2, 3, 16, 16)
    listed = vit.forward_features_list([x, small], None, [keep, None])
    torch.testing.assert_close(listed[0]["x_prenorm"], out["x_prenorm"])
    torch.testing.assert_close(listed[1]["x_prenorm"], vit.forward_features(small)["x_prenorm"])


def test_keep_indices_are_validated():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="long tensor"):
        vit.forward_features(x, keep_indices=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        vit.forward_features(x, keep_indices=torch.tensor([[0, 16], [1, 2]]))


def test_sincos_encoder_position_embeddings_are_the_fixed_table_and_never_trained():
    """I-JEPA's encoder (and MAE's) uses the fixed 2-D sine-cosine table, untrained; CLS gets zeros."""
    model = _vit(pos_embed_type="sincos")
    grid = model.patch_embed.grid_size
    expected = torch.cat([torch.zeros(1, model.embed_dim), sincos_pos_embed_2d(model.embed_dim, grid, grid)])
    assert torch.equal(model.pos_embed[0], expected)
    assert not model.pos_embed.requires_grad
    assert set(model.state_dict()) == set(_vit().state_dict())  # DINOv2's keys: exports and loaders unchanged
    student = torch.nn.ModuleDict({"backbone": model})
    names = [n for g in get_param_groups(student) for n in g["names"]]
    assert "backbone.pos_embed" not in names and "backbone.cls_token" in names
    released = _vit(pos_embed_type="sincos", sincos_order="column_first")
    assert torch.equal(released.pos_embed[0, 1:], sincos_pos_embed_2d(model.embed_dim, grid, grid, "column_first"))
    with pytest.raises(ValueError, match="sincos_order='col' is not one of row_first, column_first"):
        _vit(pos_embed_type="sincos", sincos_order="col")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.forward_features(torch.randn(2, 3, 32, 32))["x_norm_patchtokens"].square().mean().backward()
    optimizer.step()
    assert torch.equal(model.pos_embed[0], expected)


def test_unknown_position_embedding_type_is_refused():
    with pytest.raises(ValueError, match="pos_embed_type='alibi'"):
        _vit(pos_embed_type="alibi")
