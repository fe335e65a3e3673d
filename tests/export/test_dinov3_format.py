"""DINOv3's layout: dinolite's RoPE backbone loading the weights of DINOv3's own ViT gives DINOv3's features.

The fixture was recorded by running DINOv3's released model code (facebookresearch/dinov3 6876159,
``dinov3/models/vision_transformer.py``, random weights, a small ViT shaped like the hub's ``dinov3_vits16``:
RoPE base 100, separate coordinates, rescale 2, LayerScale, eps 1e-5, 4 storage tokens, ``mask_k_bias``) outside
the repository: /work/wt/notes/released_golden/rope_dinov3.py. Its weights are stored under DINOv3's key names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dinolite
from dinolite.export.dinov3_format import (
    dinov3_vit_kwargs,
    from_dinov3_state_dict,
    is_dinov3_layout,
    to_dinov3_state_dict,
)
from dinolite.export.spec import ExportFormatError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "released" / "dinov3_rope.safetensors"
# measured on the recording machine: 0.0 (bitwise); the margin is for other CPU kernels (features are ~1)
ATOL = 1e-5


@pytest.fixture(scope="module")
def release() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


def _dinov3_weights(release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("weights/"): v for k, v in release.items() if k.startswith("weights/")}


@pytest.fixture(scope="module")
def loaded(release, tmp_path_factory) -> torch.nn.Module:
    """The release's weights saved as DINOv3 saves a backbone (a .pth state dict), read by dinolite's loader."""
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_tiny_pretrain.pth"
    torch.save(_dinov3_weights(release), path)
    return dinolite.load_backbone(path)


def test_the_file_is_read_as_dinov3s_rope_vit(loaded) -> None:
    spec = loaded.spec
    assert (spec.position, spec.rope_normalize_coords, spec.source) == ("rope", "separate", "dinov3")
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.num_register_tokens) == (192, 2, 3, 4)
    assert spec.layernorm_eps == 1e-5 and spec.layerscale is not None
    assert loaded.norm.eps == 1e-5 and loaded.blocks[0].norm1.eps == 1e-5


@pytest.mark.parametrize("resolution", ["train_res", "other_res"])
def test_the_same_features_as_dinov3s_code(loaded, release, resolution: str) -> None:
    images = release[f"input/{resolution}"]
    with torch.no_grad():
        features = loaded.forward_features(images)
        (patches, cls), _ = loaded.get_intermediate_layers(images, n=2, return_class_token=True)
    pairs = {
        "x_norm_clstoken": features["x_norm_clstoken"],
        "x_storage_tokens": features["x_norm_regtokens"],
        "x_norm_patchtokens": features["x_norm_patchtokens"],
        "x_prenorm": features["x_prenorm"],
        "intermediate0_patches": patches,
        "intermediate0_cls": cls,
    }
    for name, ours in pairs.items():
        theirs = release[f"output/{resolution}/{name}"]
        assert ours.shape == theirs.shape, name
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=name)


def test_the_mask_token_replaces_masked_patches_as_in_dinov3(loaded, release) -> None:
    with torch.no_grad():
        features = loaded.forward_features(release["input/train_res"], masks=release["input/masks"])
    for name in ("x_norm_patchtokens", "x_norm_clstoken"):
        torch.testing.assert_close(features[name], release[f"output/masked/{name}"], atol=ATOL, rtol=0)


def test_training_mode_coordinate_augmentation_draws_as_dinov3_does(loaded, release) -> None:
    """Shift 0.1, jitter 1.5 and rescale 2 drawn for every block from the same seed: the same features, so the
    draws come in DINOv3's order and from the same distributions."""
    rope = loaded.rope_embed
    assert rope.rescale_coords is None  # a loaded backbone is for evaluation: no augmentation unless asked
    rope.shift_coords, rope.jitter_coords, rope.rescale_coords = 0.1, 1.5, 2.0
    try:
        loaded.train()
        torch.manual_seed(123)
        with torch.no_grad():
            features = loaded.forward_features(release["input/train_res"])
    finally:
        loaded.eval()
        rope.shift_coords = rope.jitter_coords = rope.rescale_coords = None
    for name in ("x_norm_patchtokens", "x_norm_clstoken"):
        torch.testing.assert_close(features[name], release[f"output/augmented/{name}"], atol=ATOL, rtol=0)
    with torch.no_grad():
        plain = loaded.forward_features(release["input/train_res"])["x_norm_patchtokens"]
    assert (plain - release["output/augmented/x_norm_patchtokens"]).abs().max() > 1e-2


def test_the_key_bias_mask_is_folded_in(release) -> None:
    """The release's k bias is non-zero and masked; kept unmasked it would change the features (RoPE rotates keys)."""
    weights = _dinov3_weights(release)
    bias, mask = weights["blocks.0.attn.qkv.bias"], weights["blocks.0.attn.qkv.bias_mask"]
    assert mask.tolist() == [1.0] * 192 + [0.0] * 192 + [1.0] * 192 and bias[192:384].abs().max() > 0
    converted = from_dinov3_state_dict(weights, img_size=16)
    assert "blocks.0.attn.qkv.bias_mask" not in converted and not converted["blocks.0.attn.qkv.bias"][192:384].any()
    assert torch.equal(converted["register_tokens"], weights["storage_tokens"])
    assert converted["pos_embed"].shape == (1, 1 + 16, 192) and not converted["pos_embed"].any()


def test_export_to_dinov3s_layout_round_trips(loaded, release) -> None:
    weights = _dinov3_weights(release)
    exported = to_dinov3_state_dict(loaded.state_dict(), loaded.spec)
    assert sorted(exported) == sorted(weights) and is_dinov3_layout(exported)
    assert all(bool((exported[k] == 1).all()) for k in exported if k.endswith("bias_mask"))
    back = from_dinov3_state_dict(exported, img_size=loaded.spec.img_size)
    assert all(torch.equal(back[k], v) for k, v in loaded.state_dict().items())
    kwargs = dinov3_vit_kwargs(loaded.spec)
    assert kwargs["norm_layer"] == "layernormbf16" and kwargs["n_storage_tokens"] == 4 and kwargs["mask_k_bias"]


def test_what_dinolite_cannot_hold_is_refused(release, loaded) -> None:
    weights = _dinov3_weights(release)
    with pytest.raises(ExportFormatError, match="cls_norm.*untie_cls_and_patch_norms"):
        from_dinov3_state_dict({**weights, "cls_norm.weight": torch.ones(192)}, origin="x.pth")
    assert "local_cls_norm.weight" not in from_dinov3_state_dict({**weights, "local_cls_norm.weight": torch.ones(192)})
    with pytest.raises(ExportFormatError, match="img_size=18 is not a multiple of the 4-pixel patch"):
        from_dinov3_state_dict(weights, img_size=18)
    learned = dinolite.models.DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    from dinolite.export.spec import spec_from_backbone

    with pytest.raises(ExportFormatError, match="DINOv3's ViT has RoPE"):
        to_dinov3_state_dict(learned.state_dict(), spec_from_backbone(learned))
