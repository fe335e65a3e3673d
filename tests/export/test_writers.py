"""Export formats round-trip to identical features, and bad files fail with clear messages."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from dinolite.export.load import load_backbone, load_backbone_state_dict, load_pretrained
from dinolite.export.spec import ExportFormatError, spec_from_backbone, spec_from_state_dict
from dinolite.export.writers import write_dinov2, write_onnx, write_safetensors, write_timm
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


def test_spec_in_safetensors_metadata_suffices_without_json(tmp_path):
    model = _tiny(embed_dim=96, num_heads=3)  # not a DINOv2 width: shapes alone cannot give the heads
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors.json").unlink()
    loaded = load_backbone(tmp_path / "b.safetensors")
    assert loaded.spec.num_heads == 3


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


@pytest.mark.parametrize("registers,ffn_layer", [(0, "mlp"), (4, "mlp"), (0, "swiglu")])
def test_timm_model_gives_the_same_features(tmp_path, registers, ffn_layer):
    timm = pytest.importorskip("timm")
    model = _tiny(num_register_tokens=registers, ffn_layer=ffn_layer)
    spec = spec_from_backbone(model)
    write_timm(model.state_dict(), spec, tmp_path / "timm.safetensors")
    record = json.loads((tmp_path / "timm.safetensors.json").read_text())
    expected_name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    assert record["timm_model"] == expected_name

    from safetensors.torch import load_file

    from dinolite.export.timm_format import timm_model_args

    name, kwargs = timm_model_args(spec)
    timm_model = timm.create_model(name, pretrained=False, **kwargs).eval()
    timm_model.load_state_dict(load_file(str(tmp_path / "timm.safetensors")), strict=True)
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = timm_model.forward_features(images)
    cls, patches = _features(model, images)
    torch.testing.assert_close(tokens[:, 0], cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 1 + registers :], patches, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_onnx_matches_pytorch_at_two_sizes_and_batches(tmp_path, exporter):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    model = _tiny(num_register_tokens=4)
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


def test_patchify_embed_equals_the_conv_patch_embedding():
    from dinolite.export.onnx_pos_embed import patchify_embed

    model = _tiny()
    images = torch.randn(2, 3, 42, 56)
    expected = model.patch_embed(images)
    proj = model.patch_embed.proj
    torch.testing.assert_close(patchify_embed(images, proj.weight, proj.bias, 14), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):
        patchify_embed(torch.randn(1, 3, 30, 28), proj.weight, proj.bias, 14)


def test_safetensors_header_wins_over_a_sidecar(tmp_path):
    # A stale or foreign NAME.json beside the weights (e.g. the record of another export of the same
    # stem) must not relabel them: the header was written with the weights.
    model = _tiny()
    write_safetensors(model.state_dict(), spec_from_backbone(model, source="teacher"), tmp_path / "m.safetensors")
    stale = json.loads(spec_from_backbone(model, source="student").to_json())
    (tmp_path / "m.json").write_text(json.dumps(stale))
    (tmp_path / "m.safetensors.json").write_text(json.dumps(stale))
    assert load_backbone(tmp_path / "m.safetensors").spec.source == "teacher"


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


def test_other_architecture_names_mismatching_keys_and_shapes(tmp_path):
    model = _tiny()
    spec = spec_from_backbone(model)
    state = model.state_dict()
    state["blocks.1.attn.qkv.weight"] = torch.zeros(10, 384)
    del state["norm.bias"]
    write_safetensors(state, spec, tmp_path / "bad.safetensors")
    with pytest.raises(
        ExportFormatError, match=r"blocks\.1\.attn\.qkv\.weight: file \(10, 384\).*missing keys: \['norm\.bias'\]"
    ):
        load_backbone(tmp_path / "bad.safetensors")


def test_truncated_file_fails_clearly(tmp_path):
    model = _tiny()
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportFormatError, match=r"t\.safetensors.*truncated"):
        load_backbone(tmp_path / "t.safetensors")
    torch.save(model.state_dict(), tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportFormatError, match=r"t\.pth.*truncated"):
        load_backbone(tmp_path / "t.pth")


class _Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pickle payload executed",))


def test_non_dinolite_files_are_refused_without_unpickling(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ExportFormatError, match=r"not a DINOv2/dinolite backbone.*fc\.weight"):
        load_backbone(tmp_path / "foreign.safetensors")
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"cls_token": _Payload()}, handle)
    with pytest.raises(ExportFormatError, match="weights_only"):
        load_backbone(tmp_path / "evil.pth")
    assert "pickle payload executed" not in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ExportFormatError, match="unknown backbone file type"):
        load_backbone_state_dict(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_backbone(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, False), (0.0, True), (0.1, True)])
def test_graph_friendly_pos_embed_resampling_equals_the_backbones(offset, antialias):
    from dinolite.export.onnx_pos_embed import resample_pos_embed
    from dinolite.models.pos_embed import interpolate_pos_embed

    torch.manual_seed(0)
    for side in (2, 5, 37):
        pos_embed = torch.randn(1, 1 + side * side, 8)
        for h, w in [(side, side), (side + 1, side), (3, 7), (1, 1), (2 * side, side + 3), (side, 1)]:
            expected = interpolate_pos_embed(pos_embed, (h, w), offset, antialias)
            got = resample_pos_embed(pos_embed, torch.arange(h), torch.arange(w), offset, antialias)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torch_hub_entrypoints_load_local_exports(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    model = _tiny()
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "b.safetensors")
    hub_model = torch.hub.load(str(repo), "backbone", path=str(tmp_path / "b.safetensors"), source="local")
    images = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(_features(hub_model, images)[0], _features(model, images)[0], rtol=0, atol=0)
    write_dinov2(model.state_dict(), tmp_path / "dinov2_vits14_pretrain.pth")
    vits14 = torch.hub.load(
        str(repo), "dinov2_vits14", path=str(tmp_path / "dinov2_vits14_pretrain.pth"), source="local"
    )
    assert vits14.spec.arch == "vit_small"
    with pytest.raises(ValueError, match="not a vit_large/14"):
        torch.hub.load(str(repo), "dinov2_vitl14", path=str(tmp_path / "dinov2_vits14_pretrain.pth"), source="local")
