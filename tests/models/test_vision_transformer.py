"""DinoVisionTransformer: shapes, DINOv2 state-dict layout, initialisation, masks, registers, the DINOv2
API (last self-attention, intermediate layers, lists of crops). Sizes and config mapping:
test_backbone_factory.py."""

from __future__ import annotations

import pytest
import torch

from dinolite.models import DinoVisionTransformer, swiglu_hidden_dim, vit_small
from dinolite.models.backbone_factory import ARCHITECTURES, FACTORIES


def tiny(**kwargs) -> DinoVisionTransformer:
    defaults = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, init_values=1e-5)
    return DinoVisionTransformer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------
# sizes, shapes, dtypes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(FACTORIES))
@pytest.mark.parametrize("registers", [0, 4])
def test_forward_shapes_every_width(arch, registers):
    torch.manual_seed(0)
    model = FACTORIES[arch](patch_size=16, img_size=32, depth=1, num_register_tokens=registers).eval()
    x = torch.randn(2, 3, 32, 48)  # non-square: 2 x 3 patches
    d = ARCHITECTURES[arch]["embed_dim"]
    with torch.no_grad():
        out = model.forward_features(x)
        cls = model(x)
    assert out["x_norm_clstoken"].shape == (2, d)
    assert out["x_norm_regtokens"].shape == (2, registers, d)
    assert out["x_norm_patchtokens"].shape == (2, 6, d)
    assert out["x_prenorm"].shape == (2, 1 + registers + 6, d)
    assert out["masks"] is None
    assert all(out[k].dtype == torch.float32 for k in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"))
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    with torch.no_grad():
        as_dict = model(x, is_training=True)
    torch.testing.assert_close(as_dict["x_norm_patchtokens"], out["x_norm_patchtokens"])
    assert torch.isfinite(out["x_prenorm"]).all()


def test_bfloat16_model_keeps_dtype_and_autocast_runs():
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x)
        out = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    torch.testing.assert_close(auto.float(), ref, atol=0.1, rtol=0.05)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="not a multiple of patch_size=8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="masks of shape"):
        model.forward_features(torch.randn(2, 3, 32, 32), masks=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks must be a bool tensor"):
        model.forward_features(torch.randn(2, 3, 32, 32), masks=torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        tiny(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="ffn_layer"):
        tiny(ffn_layer="moe")
    with pytest.raises(ValueError, match="attention"):
        tiny(attention="flash")


# ------------------------------------------------------------------------------------------------
# DINOv2 state-dict layout
# ------------------------------------------------------------------------------------------------


def dinov2_layout(
    dim: int, depth: int, n_patches: int, patch: int, registers: int, ffn: str, layerscale: bool
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released DINOv2 backbone, written from the published layout."""
    spec: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + n_patches, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if registers:
        spec["register_tokens"] = (1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        spec.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim),
                b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim),
                b + "attn.proj.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
            }
        )
        if layerscale:
            spec[b + "ls1.gamma"] = (dim,)
            spec[b + "ls2.gamma"] = (dim,)
        if ffn == "mlp":
            spec.update(
                {
                    b + "mlp.fc1.weight": (4 * dim, dim),
                    b + "mlp.fc1.bias": (4 * dim,),
                    b + "mlp.fc2.weight": (dim, 4 * dim),
                    b + "mlp.fc2.bias": (dim,),
                }
            )
        else:
            h = swiglu_hidden_dim(4 * dim)
            spec.update(
                {
                    b + "mlp.w12.weight": (2 * h, dim),
                    b + "mlp.w12.bias": (2 * h,),
                    b + "mlp.w3.weight": (dim, h),
                    b + "mlp.w3.bias": (dim,),
                }
            )
    return spec


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_vits14_state_dict_loads_strictly(registers):
    """ViT-S/14 at 518 px (DINOv2's released shape, 37x37 patches), with and without 4 registers.

    The full 12-block layout is checked on the meta device (no memory); real weights are loaded into a
    2-block copy, which must then give the same features as a second model given the same weights."""
    spec = dinov2_layout(384, 12, 37 * 37, 14, registers, "mlp", layerscale=True)
    with torch.device("meta"):
        full = vit_small(patch_size=14, img_size=518, init_values=1.0, num_register_tokens=registers)
        full.load_state_dict({k: torch.empty(shape) for k, shape in spec.items()}, strict=True)
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == spec

    shallow = dinov2_layout(384, 2, 37 * 37, 14, registers, "mlp", layerscale=True)
    generator = torch.Generator().manual_seed(1)
    released = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shallow.items()}
    kwargs = dict(patch_size=14, img_size=518, depth=2, init_values=1.0, num_register_tokens=registers)
    model, twin = vit_small(**kwargs), vit_small(**kwargs)
    model.load_state_dict(released, strict=True)
    twin.load_state_dict(released, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in released.items())
    x = torch.randn(1, 3, 56, 42)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), twin.eval()(x))
    with pytest.raises(RuntimeError, match="register_tokens|Unexpected|Missing"):
        vit_small(**{**kwargs, "num_register_tokens": 4 - registers}).load_state_dict(released, strict=True)


def test_state_dict_layout_swiglu_and_no_layerscale():
    model = DinoVisionTransformer(
        img_size=28, patch_size=14, embed_dim=48, depth=2, num_heads=4, ffn_layer="swiglu", init_values=None
    )
    spec = dinov2_layout(48, 2, 4, 14, 0, "swiglu", layerscale=False)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec
    assert not any(".ls1." in k or ".ls2." in k for k in model.state_dict())


# ------------------------------------------------------------------------------------------------
# initialisation
# ------------------------------------------------------------------------------------------------


def test_meta_build_then_materialise_and_init():
    with torch.device("meta"):
        model = tiny(drop_path_rate=0.2)
    model.to_empty(device="cpu")
    model.init_weights()
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(model.mask_token) == 0


# ------------------------------------------------------------------------------------------------
# position embeddings
# ------------------------------------------------------------------------------------------------


def test_forward_at_other_resolutions():
    model = tiny().eval()
    with torch.no_grad():
        for h, w in [(16, 16), (48, 24), (64, 64)]:
            out = model.forward_features(torch.randn(1, 3, h, w))
            assert out["x_norm_patchtokens"].shape == (1, (h // 8) * (w // 8), 32)


# ------------------------------------------------------------------------------------------------
# masks and registers
# ------------------------------------------------------------------------------------------------


def test_masks_replace_exactly_the_masked_tokens():
    torch.manual_seed(0)
    model = tiny(num_register_tokens=2)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5, 6]] = True
    masks[1, 15] = True
    plain = model.prepare_tokens_with_masks(x)
    masked = model.prepare_tokens_with_masks(x, masks)
    patch_plain, patch_masked = plain[:, 3:], masked[:, 3:]  # after CLS and 2 registers
    expected = model.mask_token[0] + model.pos_embed[0, 1:]  # mask token + that position's embedding
    for b in range(2):
        for i in range(16):
            if masks[b, i]:
                torch.testing.assert_close(patch_masked[b, i], expected[i])
            else:
                assert torch.equal(patch_masked[b, i], patch_plain[b, i])
    assert torch.equal(masked[:, :3], plain[:, :3])
    assert model.forward_features(x, masks)["masks"] is masks


def test_registers_follow_cls_without_position_embedding():
    model = tiny(num_register_tokens=3)
    tokens = model.prepare_tokens_with_masks(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 3 + 16, 32)
    assert torch.equal(tokens[:, 1:4], model.register_tokens.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0] + model.pos_embed[0, :1]).expand(2, -1))
    assert model.pos_embed.shape == (1, 17, 32)  # registers are not in pos_embed


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------


def test_last_selfattention():
    model = tiny(num_register_tokens=2).eval()
    weights = model.get_last_selfattention(torch.randn(2, 3, 32, 48))
    assert weights.shape == (2, 4, 1 + 2 + 24, 1 + 2 + 24)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 27))


# ------------------------------------------------------------------------------------------------
# DINOv2 API: intermediate layers, lists of crops
# ------------------------------------------------------------------------------------------------


def test_get_intermediate_layers():
    model = tiny(depth=3, num_register_tokens=1).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        feats = model.forward_features(x)
        last2 = model.get_intermediate_layers(x, n=2)
        shaped = model.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True)
        raw = model.get_intermediate_layers(x, n=1, norm=False)
    assert len(last2) == 2 and last2[-1].shape == (2, 24, 32)
    torch.testing.assert_close(last2[-1], feats["x_norm_patchtokens"])
    torch.testing.assert_close(raw[0], feats["x_prenorm"][:, 2:])
    (p0, c0), (p2, c2) = shaped
    assert p0.shape == (2, 32, 4, 6) and c0.shape == (2, 32)
    torch.testing.assert_close(c2, feats["x_norm_clstoken"])
    torch.testing.assert_close(p2.flatten(2).transpose(1, 2), feats["x_norm_patchtokens"])
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, n=[3])


def test_forward_features_list_matches_separate_calls():
    torch.manual_seed(0)
    model = tiny().eval()
    globals_, locals_ = torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16)
    masks = torch.rand(4, 16) > 0.5
    with torch.no_grad():
        together = model.forward_features_list([globals_, locals_], [masks, None])
        alone = [model.forward_features(globals_, masks), model.forward_features(locals_)]
    for a, b in zip(together, alone):
        for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(a[key], b[key])
    assert together[0]["masks"] is masks and together[1]["masks"] is None


def test_backward_reaches_every_parameter():
    model = tiny(num_register_tokens=2)
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, 0] = True
    out = model.forward_features(x, masks)
    (out["x_norm_clstoken"].sum() + out["x_norm_patchtokens"].pow(2).sum() + out["x_norm_regtokens"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


# ------------------------------------------------------------------------------------------------
# config mapping
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# CLS-free encoder (cls_token=False: the released I-JEPA encoder's layout)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("registers", [0, 2])
def test_cls_free_encoder_token_layout_and_pooled_feature(registers):
    """No CLS parameter, a (1, N, D) table, tokens [registers..., patches...] (registers without position), and
    x_norm_clstoken the mean of the final-norm patch tokens."""
    torch.manual_seed(0)
    model = tiny(num_register_tokens=registers, cls_token=False).eval()
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    assert set(model.state_dict()) == set(tiny(num_register_tokens=registers).state_dict()) - {"cls_token"}
    x = torch.randn(2, 3, 32, 32)
    tokens = model.prepare_tokens_with_masks(x)
    assert tokens.shape == (2, registers + 16, 32)
    torch.testing.assert_close(tokens[:, registers:], model.patch_embed(x) + model.pos_embed)
    if registers:
        assert torch.equal(tokens[:, :registers], model.register_tokens.expand(2, -1, -1))
    with torch.no_grad():
        out = model.forward_features(x)
    assert out["x_prenorm"].shape == (2, registers + 16, 32)
    assert out["x_norm_regtokens"].shape == (2, registers, 32)
    torch.testing.assert_close(out["x_norm_patchtokens"], model.norm(out["x_prenorm"])[:, registers:])
    torch.testing.assert_close(out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1))
    torch.testing.assert_close(model(x), out["x_norm_clstoken"])


def test_cls_free_encoder_keeps_indices_masks_other_resolutions_and_the_dinov2_api():
    torch.manual_seed(0)
    model = tiny(num_register_tokens=1, cls_token=False).eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 9], [3, 4, 15]])
    kept = model.prepare_tokens_with_masks(x, keep_indices=keep)
    full = model.prepare_tokens_with_masks(x)
    assert kept.shape == (2, 1 + 3, 32)
    for b in range(2):
        assert torch.equal(kept[b, 1:], full[b, 1 + keep[b]])
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, 7] = True
    masked = model.prepare_tokens_with_masks(x, masks)
    torch.testing.assert_close(masked[0, 1 + 7], model.mask_token[0] + model.pos_embed[0, 7])
    with torch.no_grad():
        wide = model.forward_features(torch.randn(1, 3, 32, 48))
        assert wide["x_norm_patchtokens"].shape == (1, 24, 32)
        feats = model.forward_features(x)
        ((patches, pooled),) = model.get_intermediate_layers(x, n=1, return_class_token=True)
        (raw,) = model.get_intermediate_layers(x, n=1, norm=False)
    torch.testing.assert_close(patches, feats["x_norm_patchtokens"])
    torch.testing.assert_close(pooled, feats["x_norm_clstoken"])
    torch.testing.assert_close(raw, feats["x_prenorm"][:, 1:])
    weights = model.get_last_selfattention(x)
    assert weights.shape == (2, 4, 1 + 16, 1 + 16)


def test_cls_free_encoder_is_the_cls_encoder_without_its_cls_token():
    """Same weights but the CLS token: the CLS-free encoder's patch outputs are what the CLS encoder computes when
    its attention never reaches the CLS token, i.e. the blocks run on the patches alone."""
    torch.manual_seed(0)
    with_cls = tiny(pos_embed_type="sincos").eval()
    without = tiny(pos_embed_type="sincos", cls_token=False).eval()
    state = {k: v for k, v in with_cls.state_dict().items() if k != "cls_token"}
    state["pos_embed"] = state["pos_embed"][:, 1:]
    without.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    tokens = with_cls.prepare_tokens_with_masks(x)[:, 1:]  # the patches, positions added, no CLS
    with torch.no_grad():
        for block in with_cls.blocks:
            tokens = block(tokens)
        torch.testing.assert_close(without.forward_features(x)["x_norm_patchtokens"], with_cls.norm(tokens))
        assert not torch.allclose(with_cls.forward_features(x)["x_norm_patchtokens"], with_cls.norm(tokens))
