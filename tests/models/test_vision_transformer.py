"""DinoVisionTransformer: shapes, DINOv2 state-dict layout, position embeddings, masks, registers,
SwiGLU, stochastic depth, attention back-ends, config mapping."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dinolite.config import load_config
from dinolite.models import (
    ARCHITECTURES,
    DinoVisionTransformer,
    build_backbone,
    explicit_attention,
    swiglu_hidden_dim,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
    vit_tiny,
)
from dinolite.models.block import Block
from dinolite.models.pos_embed import interpolate_pos_embed
from dinolite.models.stochastic_depth import DropPath, drop_add_residual_stochastic_depth, drop_path_rates

FACTORIES = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant2": vit_giant2,
}


def tiny(**kwargs) -> DinoVisionTransformer:
    defaults = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, init_values=1e-5)
    return DinoVisionTransformer(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------
# sizes, shapes, dtypes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(FACTORIES))
def test_factory_full_size_on_meta(arch):
    with torch.device("meta"):
        model = FACTORIES[arch](patch_size=14)
    spec = ARCHITECTURES[arch]
    assert (model.embed_dim, model.n_blocks, model.num_heads) == (spec["embed_dim"], spec["depth"], spec["num_heads"])
    assert len(model.blocks) == spec["depth"]
    d, depth = spec["embed_dim"], spec["depth"]
    n_patches = (224 // 14) ** 2
    # per block: norms 4D, qkv 3D^2+3D, proj D^2+D, fc1 4D^2+4D, fc2 4D^2+D (no LayerScale by default)
    expected = 3 * 14 * 14 * d + d + (1 + n_patches) * d + d + d + depth * (12 * d * d + 13 * d) + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected


def test_giant2_shape():
    with torch.device("meta"):
        model = vit_giant2(patch_size=14, ffn_layer="swiglu")
    assert model.embed_dim == 1536 and model.n_blocks == 40 and model.num_heads == 24
    assert model.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)
    assert model.blocks[0].mlp.w3.weight.shape == (1536, 4096)


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


def test_dinov2_initialisation():
    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, init_values=1e-5, num_register_tokens=4
    )
    assert abs(model.pos_embed.std().item() - 0.02) < 0.002
    assert model.cls_token.abs().max().item() < 1e-5
    assert model.register_tokens.abs().max().item() < 1e-5 and model.register_tokens.abs().max().item() > 0
    assert torch.count_nonzero(model.mask_token) == 0
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002 and torch.count_nonzero(qkv.bias) == 0
    assert torch.equal(model.blocks[1].ls2.gamma, torch.full((192,), 1e-5))
    assert model.blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6


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
# SwiGLU
# ------------------------------------------------------------------------------------------------


def test_swiglu_hidden_size_and_formula():
    assert swiglu_hidden_dim(1536 * 4) == 4096  # ViT-g
    assert swiglu_hidden_dim(1024 * 4) == 2736  # ViT-L: int(2730.67)=2730 -> 2736
    assert swiglu_hidden_dim(384 * 4) == 1024
    model = tiny(ffn_layer="swiglu", embed_dim=48, num_heads=4)
    ffn = model.blocks[0].mlp
    assert ffn.hidden_features == swiglu_hidden_dim(192) == 128
    x = torch.randn(3, 5, 48)
    w1, w2 = ffn.w12.weight.chunk(2)
    b1, b2 = ffn.w12.bias.chunk(2)
    ref = (F.silu(x @ w1.T + b1) * (x @ w2.T + b2)) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), ref)


# ------------------------------------------------------------------------------------------------
# stochastic depth
# ------------------------------------------------------------------------------------------------


def test_drop_path_rates():
    assert drop_path_rates(0.3, 4, uniform=True) == [0.3] * 4
    assert drop_path_rates(0.3, 4, uniform=False) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = tiny(depth=4, drop_path_rate=0.3, drop_path_uniform=False)
    assert [b.sample_drop_ratio for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="drop_path_rate"):
        drop_path_rates(1.0, 4, uniform=True)


def test_drop_path_per_sample():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.randn(64, 3, 4) + 10.0
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert torch.all(kept | dropped) and 0 < kept.sum() < 64
    torch.testing.assert_close(out[kept], x[kept] * 2.0)


def test_drop_add_residual_on_a_subset():
    torch.manual_seed(0)
    x = torch.zeros(10, 2, 3)
    out = drop_add_residual_stochastic_depth(x, lambda t: torch.ones_like(t), sample_drop_ratio=0.3)
    changed = out.flatten(1).ne(0).all(1)
    assert changed.sum() == 7  # int(10 * 0.7) samples get the residual ...
    torch.testing.assert_close(out[changed], torch.full((7, 2, 3), 10 / 7))  # ... scaled by B / subset
    assert torch.count_nonzero(out[~changed]) == 0


@pytest.mark.parametrize("rate", [0.05, 0.5])  # DropPath branch and batch-subset branch
def test_block_drop_path_train_vs_eval(rate):
    torch.manual_seed(0)
    block = Block(16, 2, init_values=1.0, drop_path=rate)
    x = torch.randn(32, 5, 16)
    block.eval()
    assert torch.equal(block(x), block(x))
    full = block(x)
    block.train()
    out = block(x)
    same = torch.isclose(out, full, atol=1e-6).flatten(1).all(1)
    assert not same.all()  # some samples skipped a residual branch
    no_drop = Block(16, 2, init_values=1.0, drop_path=0.0)
    no_drop.load_state_dict(block.state_dict())
    torch.testing.assert_close(no_drop.train()(x), no_drop.eval()(x))


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------


def test_sdpa_matches_explicit_attention():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 17, 32)
    attn = model.blocks[0].attn
    out_sdpa = attn(x)
    out_ref, weights = attn.forward_explicit(x)
    torch.testing.assert_close(out_sdpa, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 17))
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    torch.testing.assert_close(explicit_attention(q, k, v)[0], by_hand)


def test_xformers_request_falls_back_to_sdpa_and_warns_once():
    torch.manual_seed(0)
    sdpa = tiny(attention="sdpa").eval()
    asked = tiny(attention="xformers").eval()
    asked.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, out2 = asked(x), asked(x)  # 2 blocks x 2 calls
        auto = tiny(attention="auto").eval()
        auto.load_state_dict(sdpa.state_dict())
        out_auto = auto(x)
    fallbacks = [w for w in caught if "falling back" in str(w.message)]
    assert len(fallbacks) == 1 and issubclass(fallbacks[0].category, RuntimeWarning)
    torch.testing.assert_close(out1, sdpa(x))
    torch.testing.assert_close(out2, out_auto)


def test_xformers_installed_but_cpu_tensors_falls_back():
    model = tiny(attention="xformers").eval()
    model.attention_backend._has_xformers = True  # as if installed: CPU tensors must still use SDPA
    with pytest.warns(RuntimeWarning, match="tensors are on cpu"):
        out = model(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()


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


def test_build_backbone_from_full_config():
    cfg = load_config("demo", ["student.layerscale=1e-5"])
    model = build_backbone(cfg)
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.patch_size) == (96, 4, 3, 4)
    assert model.pos_embed.shape == (1, 1 + (32 // 4) ** 2, 96)
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((96,), 1e-5))


def test_build_backbone_from_student_config_maps_keys():
    cfg = load_config(
        "vitl14",
        [
            "student.depth=2",
            "student.layerscale=0",
            "student.num_register_tokens=4",
            "student.ffn_layer=swiglufused",
            "student.attention=sdpa",
        ],
    )
    with torch.device("meta"):
        model = build_backbone(cfg.student, img_size=98)
    assert model.embed_dim == 1024 and model.n_blocks == 2 and model.patch_size == 14
    assert model.pos_embed.shape == (1, 1 + 49, 1024)
    assert isinstance(model.blocks[0].ls1, nn.Identity)
    assert model.blocks[0].mlp.hidden_features == swiglu_hidden_dim(4096)
    assert model.register_tokens.shape == (1, 4, 1024)
    assert model.attention_backend.requested == "sdpa"
    assert [b.sample_drop_ratio for b in model.blocks] == [0.4, 0.4]  # drop_path_uniform: true


def test_bad_head_split_is_refused_at_load_and_at_build():
    # The config refuses it at start-up, naming the key ...
    with pytest.raises(ValueError, match="'student.embed_dim': 100; must be a multiple of student.num_heads=3"):
        load_config("demo", ["student.embed_dim=100"])
    # ... and the builder still refuses a config changed in code after validation.
    cfg = load_config("demo")
    cfg.student.embed_dim = 100
    with pytest.raises(ValueError, match="student.embed_dim=100 is not divisible by student.num_heads=3"):
        build_backbone(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention", ["auto", "sdpa", "xformers"])
def test_cuda_bf16_attention_backends_agree(attention):
    """On CUDA every back-end (xformers when installed, else the SDPA fallback) matches the fp32
    explicit reference within bf16 tolerance."""
    torch.manual_seed(0)
    model = tiny(embed_dim=64, attention=attention).cuda().eval()
    x = torch.randn(2, 17, 64, device="cuda")
    attn = model.blocks[0].attn
    with torch.no_grad():
        reference, _ = attn.forward_explicit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # xformers may be absent
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = attn(x)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
