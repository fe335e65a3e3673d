"""The ViT's visible-token path, I-JEPA's predictor and the SimMIM / MSN heads."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.models.masked_heads import MSNProjectionHead, Prototypes, SimMIMHead
from dinolite.models.pos_embed import sincos_pos_embed_2d
from dinolite.models.predictor import IJEPAPredictor
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


def test_sincos_pos_embed_hand_values():
    table = sincos_pos_embed_2d(4, 1, 2)  # omega = [1]; channels: [sin row, cos row, sin col, cos col]
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, math.sin(1.0), math.cos(1.0)]])
    torch.testing.assert_close(table, expected)
    assert sincos_pos_embed_2d(8, 3, 3).shape == (9, 8)


def test_predictor_shapes_and_block_independence():
    torch.manual_seed(0)
    predictor = IJEPAPredictor(grid=4, embed_dim=48, predictor_embed_dim=24, depth=2, num_heads=2).eval()
    context = torch.randn(2, 6, 48, requires_grad=True)
    context_idx = torch.tensor([[0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15]])
    target_idx = torch.tensor([[[8, 9], [12, 13], [6, 7]], [[0, 1], [4, 5], [2, 3]]])
    out = predictor(context, context_idx, target_idx)
    assert out.shape == (2, 3, 2, 48)
    # each target block is predicted from the context alone: other blocks' queries do not matter
    other = target_idx.clone()
    other[:, 1:] = torch.tensor([[9, 8], [7, 6]])
    torch.testing.assert_close(predictor(context, context_idx, other)[:, 0], out[:, 0])
    # the prediction depends on where the target is (position embedding of the query)
    assert not torch.allclose(out[0, 0], out[0, 1])
    out.sum().backward()
    assert context.grad is not None and predictor.mask_token.grad is not None
    assert not any(k.startswith("pos") for k in predictor.state_dict())


def test_simmim_head_lays_out_pixels_like_pixel_shuffle():
    head = SimMIMHead(embed_dim=12, patch_size=2, in_chans=3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(12))
        head.proj.bias.zero_()
    tokens = torch.arange(2 * 4 * 12, dtype=torch.float32).reshape(2, 4, 12)  # 2x2 grid of tokens
    image = head(tokens, (2, 2))
    assert image.shape == (2, 3, 4, 4)
    # pixel (c, i, j) of patch (r, s) is feature c*p*p + i*p + j of token r*w + s
    for b, c, r, s, i, j in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 0, 1, 1), (0, 1, 0, 1, 0, 1)]:
        assert image[b, c, r * 2 + i, s * 2 + j] == tokens[b, r * 2 + s, c * 4 + i * 2 + j]


def test_msn_head_and_prototypes():
    head = MSNProjectionHead(48, hidden_dim=64, out_dim=16)
    assert head(torch.randn(5, 48)).shape == (5, 16)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in MSNProjectionHead(48, 64, 16, use_bn=False).modules())
    prototypes = Prototypes(32, 16)
    assert prototypes().shape == (32, 16) and float(prototypes.weight.detach().abs().max()) <= 0.25


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
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.forward_features(torch.randn(2, 3, 32, 32))["x_norm_patchtokens"].square().mean().backward()
    optimizer.step()
    assert torch.equal(model.pos_embed[0], expected)


def test_unknown_position_embedding_type_is_refused():
    with pytest.raises(ValueError, match="pos_embed_type='rope'"):
        _vit(pos_embed_type="rope")


@pytest.mark.parametrize("ffn_layer", ["mlp", "swiglu"])
def test_ijepa_weight_init_is_the_released_encoders(ffn_layer):
    """Patch projection N(0, 0.02) truncated with zero bias; residual projections of block l (from 1)
    are DINOv2's draw divided by sqrt(2 l); everything else is DINOv2's initialisation, draw for draw."""
    torch.manual_seed(0)
    dinov2 = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, ffn_layer=ffn_layer)
    torch.manual_seed(0)
    ijepa = DinoVisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, ffn_layer=ffn_layer, weight_init="ijepa"
    )
    out = "fc2" if ffn_layer == "mlp" else "w3"
    reference, ours = dinov2.state_dict(), ijepa.state_dict()
    for name, value in ours.items():
        if name.startswith("patch_embed.proj."):
            continue
        layer = int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None
        if name.endswith(("attn.proj.weight", f"mlp.{out}.weight")):
            torch.testing.assert_close(value, reference[name] / math.sqrt(2.0 * layer), rtol=0, atol=0)
        else:
            assert torch.equal(value, reference[name]), name
    weight = ours["patch_embed.proj.weight"]
    assert torch.equal(ours["patch_embed.proj.bias"], torch.zeros(48))
    # trunc_normal_'s bounds are absolute (+-2), as in the reference: at std 0.02 it is N(0, 0.02)
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert dinov2.patch_embed.proj.weight.std() > 2 * weight.std()  # PyTorch's default is ~4x wider here
    with pytest.raises(ValueError, match="weight_init='jax'"):
        DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, weight_init="jax")
