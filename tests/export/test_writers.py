"""Export writers: safetensors, DINOv2 and ONNX files round-trip to identical features; heads beside the
backbone; the format follows the suffix; the clone's torch.hub entry points load local exports."""

from __future__ import annotations

import json

import pytest
import torch

from dinolite.export.load import load_backbone, load_pretrained
from dinolite.export.spec import spec_from_backbone, spec_from_state_dict
from dinolite.export.writers import write_dinov2, write_onnx, write_safetensors
from dinolite.models import DinoVisionTransformer


def _tiny(**overrides) -> DinoVisionTransformer:
    kwargs = dict(img_size=28, patch_size=14, embed_dim=384, depth=2, num_heads=6, init_values=1e-5)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = DinoVisionTransformer(**kwargs).eval()
    # LayerScale starts at 1e-5, which would hide a wrongly loaded block: make the blocks matter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)
    return model


def _features(model, images):
    with torch.no_grad():
        out = model.forward_features(images)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]


@pytest.mark.parametrize("registers", [0, 4])
def test_safetensors_round_trip_gives_identical_features(tmp_path, registers):
    model = _tiny(num_register_tokens=registers)
    spec = spec_from_backbone(model, iteration=123, train_img_size=28)
    written = write_safetensors(model.state_dict(), spec, tmp_path / "teacher.safetensors")
    assert [p.name for p in written] == ["teacher.safetensors", "teacher.safetensors.json"]
    record = json.loads((tmp_path / "teacher.safetensors.json").read_text())
    assert record["num_register_tokens"] == registers and record["iteration"] == 123
    assert record["mean"] == [0.485, 0.456, 0.406]

    loaded = load_backbone(tmp_path / "teacher.safetensors")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    images = torch.randn(2, 3, 42, 56)  # not the trained size: exercises interpolation too
    for ours, theirs in zip(_features(model, images), _features(loaded, images)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("ffn_layer", ["mlp", "swiglu"])
def test_dinov2_layout_round_trip(tmp_path, ffn_layer):
    model = _tiny(ffn_layer=ffn_layer, num_register_tokens=4)
    write_dinov2(model.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    raw = torch.load(tmp_path / "dinov2_vits14_reg4_pretrain.pth", weights_only=True)
    assert set(raw) == set(model.state_dict())
    spec = spec_from_state_dict(raw)
    assert (spec.arch, spec.patch_size, spec.num_register_tokens, spec.ffn_layer) == ("vit_small", 14, 4, ffn_layer)
    loaded = load_backbone(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    images = torch.randn(3, 3, 28, 28)
    for ours, theirs in zip(_features(model, images), _features(loaded, images)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("cls_token", [True, False])  # False: the cls output is the mean patch token
@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_onnx_matches_pytorch_at_two_sizes_and_batches(tmp_path, exporter, cls_token):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    model = _tiny(num_register_tokens=4, cls_token=cls_token)
    spec = spec_from_backbone(model, train_img_size=28)
    write_onnx(model, spec, tmp_path / "backbone.onnx", exporter=exporter)
    session = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    for batch, height, width in [(1, 28, 28), (3, 42, 70), (2, 56, 28)]:
        images = torch.randn(batch, 3, height, width)
        cls, patches = session.run(None, {"images": images.numpy()})
        ref_cls, ref_patches = _features(model, images)
        assert patches.shape == (batch, (height // 14) * (width // 14), 384)
        torch.testing.assert_close(torch.from_numpy(cls), ref_cls, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(patches), ref_patches, rtol=1e-3, atol=1e-4)


def test_onnx_refuses_sizes_off_the_patch_grid_and_carries_metadata(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _tiny()
    spec = spec_from_backbone(model, train_img_size=28, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    written = write_onnx(model, spec, tmp_path / "m.onnx")
    assert [p.name for p in written] == ["m.onnx", "m.onnx.json"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    session.run(None, {"images": torch.randn(1, 3, 42, 28).numpy()})  # 3x2 patches of 14
    for height, width in [(30, 28), (28, 43)]:  # traced at 28x28; a conv would silently floor these
        with pytest.raises(Exception, match="(?i)reshape|shape"):
            session.run(None, {"images": torch.randn(1, 3, height, width).numpy()})
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["dinolite.arch"] == spec.arch and props["dinolite.patch_size"] == "14"
    assert json.loads(props["dinolite.mean"]) == [0.5, 0.4, 0.3] and json.loads(props["dinolite.std"]) == [0.2] * 3
    assert json.loads(props["dinolite_backbone"]) == json.loads(spec.to_json())


def test_format_follows_the_suffix_or_is_checked_against_it():
    from dinolite.export.writers import resolve_format

    assert resolve_format("x.onnx", None) == "onnx"
    assert resolve_format("x.safetensors", None) == "safetensors"
    assert resolve_format("x.pth", None) == "dinov2"
    assert resolve_format("x.safetensors", "timm") == "timm"
    with pytest.raises(ValueError, match="--format safetensors writes .safetensors files, not '.onnx'"):
        resolve_format("x.onnx", "safetensors")
    with pytest.raises(ValueError, match="cannot tell the format from the suffix '.bin'"):
        resolve_format("x.bin", None)


def test_heads_are_written_beside_the_backbone(tmp_path):
    model = _tiny()
    heads = {"dino_head.last_layer.weight": torch.randn(8, 4), "extra.dino_center": torch.zeros(1, 8)}
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "t.safetensors", heads=heads)
    pretrained = load_pretrained(tmp_path / "t.safetensors")
    assert set(pretrained.heads) == set(heads)
    torch.testing.assert_close(pretrained.heads["dino_head.last_layer.weight"], heads["dino_head.last_layer.weight"])
    assert set(pretrained.backbone) == set(model.state_dict())


def test_torch_hub_entrypoints_load_local_exports(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    model = _tiny()
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "b.safetensors")
    hub_model = torch.hub.load(str(repo), "backbone", path=str(tmp_path / "b.safetensors"), source="local")
    images = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(_features(hub_model, images)[0], _features(model, images)[0], rtol=0, atol=0)
    released = tmp_path / "dinov2_vits14_pretrain.pth"
    write_dinov2(_tiny(depth=12).state_dict(), released)  # ViT-S/14 whole: the entry's network
    vits14 = torch.hub.load(str(repo), "dinov2_vits14", path=str(released), source="local")
    assert vits14.spec.arch == "vit_small" and vits14.spec.depth == 12
    with pytest.raises(ValueError, match="not a vit_large/14"):
        torch.hub.load(str(repo), "dinov2_vitl14", path=str(released), source="local")
    # a ViT-S-wide file of another depth or FFN is not DINOv2's ViT-S/14: the error names both values
    write_dinov2(model.state_dict(), tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"not DINOv2's dinov2_vits14: depth 2 \(the entry: 12\)"):
        torch.hub.load(str(repo), "dinov2_vits14", path=str(tmp_path / "shallow.pth"), source="local")
    write_dinov2(_tiny(depth=12, ffn_layer="swiglufused").state_dict(), tmp_path / "swiglu.pth")
    with pytest.raises(ValueError, match="ffn_layer 'swiglu"):
        torch.hub.load(str(repo), "dinov2_vits14", path=str(tmp_path / "swiglu.pth"), source="local")
