"""DINOv3's ViT in timm (``Eva``, ``vit_*_patch16_dinov3``) and transformers (``DINOv3ViTModel``), offline: a
dinolite RoPE backbone (the weights of DINOv3's own code, tests/fixtures/released/dinov3_rope.safetensors) exported
to both gives the same features at the training resolution and another, and their files load back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dinolite
from dinolite.export.dinov3_hf_format import (
    from_timm_dinov3_state_dict,
    from_transformers_dinov3_state_dict,
    is_timm_dinov3_layout,
    is_transformers_dinov3_layout,
    rope_base_of,
    timm_dinov3_model_args,
    to_timm_dinov3_state_dict,
    to_transformers_dinov3_config,
    to_transformers_dinov3_state_dict,
)
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.models import DinoVisionTransformer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "released" / "dinov3_rope.safetensors"
# measured: 2.1e-6 at most (timm and transformers order the rotation's products and attention differently)
ATOL = 1e-5
SIZES = [(16, 16), (24, 32)]  # the training resolution, and another (non-square)


@pytest.fixture(scope="module")
def backbone() -> DinoVisionTransformer:
    """DINOv3's released code's weights (2 blocks, width 192, 4 registers, LayerScale, eps 1e-5, qkv bias with the
    key part masked to zero) in dinolite's RoPE backbone, trained at 16 px."""
    weights = {k.removeprefix("weights/"): v for k, v in load_file(str(FIXTURE)).items() if k.startswith("weights/")}
    from dinolite.export.dinov3_format import from_dinov3_state_dict

    state = from_dinov3_state_dict(weights, img_size=16)
    model = DinoVisionTransformer(
        img_size=16, patch_size=4, embed_dim=192, depth=2, num_heads=3, mlp_ratio=1.0, init_values=1e-5,
        num_register_tokens=4, pos_embed_type="rope", layernorm_eps=1e-5,
    )  # fmt: skip
    model.load_state_dict(state)
    model.spec = spec_from_backbone(model)
    return model.eval()


def _all_tokens(model: DinoVisionTransformer, images: torch.Tensor) -> torch.Tensor:
    f = model.forward_features(images)
    return torch.cat((f["x_norm_clstoken"][:, None], f["x_norm_regtokens"], f["x_norm_patchtokens"]), dim=1)


@pytest.mark.parametrize("size", SIZES)
def test_timm_gives_the_same_features(backbone, size) -> None:
    timm = pytest.importorskip("timm")
    state, spec = backbone.state_dict(), backbone.spec
    name, kwargs = timm_dinov3_model_args(spec, rope_base_of(state, spec, "timm"))
    assert name == "vit_small_patch16_dinov3_qkvb"  # the registered entry (its sizes overridden)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    model.load_state_dict(to_timm_dinov3_state_dict(state, spec), strict=True)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), _all_tokens(backbone, images), atol=ATOL, rtol=0)
        torch.testing.assert_close(model(images), backbone(images), atol=ATOL, rtol=0)  # CLS pooling


@pytest.mark.parametrize("size", SIZES)
def test_transformers_gives_the_same_features(backbone, size) -> None:
    transformers = pytest.importorskip("transformers")
    state, spec = backbone.state_dict(), backbone.spec
    config = transformers.DINOv3ViTConfig(**to_transformers_dinov3_config(spec, state))
    model = transformers.DINOv3ViTModel(config).eval()
    model.load_state_dict(to_transformers_dinov3_state_dict(state, spec), strict=True)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=images)
        torch.testing.assert_close(out.last_hidden_state, _all_tokens(backbone, images), atol=ATOL, rtol=0)
        torch.testing.assert_close(out.pooler_output, backbone(images), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("export", "load", "detect"),
    [
        (to_timm_dinov3_state_dict, from_timm_dinov3_state_dict, is_timm_dinov3_layout),
        (to_transformers_dinov3_state_dict, from_transformers_dinov3_state_dict, is_transformers_dinov3_layout),
    ],
    ids=["timm", "transformers"],
)
def test_their_files_load_back_into_dinolite(backbone, export, load, detect, tmp_path) -> None:
    state = backbone.state_dict()
    theirs = export(state, backbone.spec)
    assert detect(theirs)
    back = load(theirs, img_size=16)
    lost = set() if any("mask_token" in k for k in theirs) else {"mask_token"}  # timm keeps no mask token
    assert sorted(back) == sorted(state)
    assert [k for k in state if k not in lost and not torch.equal(back[k], state[k])] == []
    path = tmp_path / "model.safetensors"
    save_file(theirs, str(path))
    loaded = dinolite.load_backbone(path)  # recognised by its keys: DINOv3's 224 px record, eps 1e-5
    assert (loaded.spec.position, loaded.spec.source, loaded.spec.layernorm_eps) == ("rope", "dinov3", 1e-5)
    images = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(images)["x_norm_patchtokens"],
                                   backbone.forward_features(images)["x_norm_patchtokens"], atol=0, rtol=0)  # fmt: skip


def test_what_they_cannot_express_is_refused(backbone) -> None:
    state, spec = dict(backbone.state_dict()), backbone.spec
    keyed = {**state, "blocks.0.attn.qkv.bias": state["blocks.0.attn.qkv.bias"] + 0.1}
    with pytest.raises(ExportFormatError, match="keys' bias is not zero.*mask_k_bias"):
        to_timm_dinov3_state_dict(keyed, spec)
    assert to_transformers_dinov3_config(spec, keyed)["key_bias"] is True  # transformers has a key bias
    assert "model.layer.0.attention.k_proj.bias" in to_transformers_dinov3_state_dict(keyed, spec)
    with pytest.raises(ExportFormatError, match="normalises RoPE coordinates per axis only"):
        to_timm_dinov3_state_dict(state, dataclasses.replace(spec, rope_normalize_coords="max"))
    periods = {**state, "rope_embed.periods": torch.tensor([1.0, 3.0, 5.0, 7.0] * 4)}
    with pytest.raises(ExportFormatError, match="periods are not base"):
        to_transformers_dinov3_state_dict(periods, spec)
    learned = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ExportFormatError, match="position=absolute"):
        to_timm_dinov3_state_dict(learned.state_dict(), spec_from_backbone(learned))
