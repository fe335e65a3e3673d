"""The backbone record: built from a model or inferred from a DINOv2 state dict, it rebuilds the same
architecture; a record that is foreign, newer, incomplete or does not describe the weights is refused."""

from __future__ import annotations

import json

import pytest
import torch

from dinolite.export.errors import ExportFormatError
from dinolite.export.spec import (
    FORMAT_VERSION,
    BackboneSpec,
    check_spec_against_shapes,
    spec_from_backbone,
    spec_from_state_dict,
)
from dinolite.models import DinoVisionTransformer


def _model(**overrides) -> DinoVisionTransformer:
    kwargs = dict(img_size=28, patch_size=14, embed_dim=384, depth=2, num_heads=6, init_values=1e-5)
    return DinoVisionTransformer(**{**kwargs, **overrides})


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("overrides", [{}, {"num_register_tokens": 4, "ffn_layer": "swiglu"}])
def test_a_record_rebuilds_the_same_architecture(overrides, tmp_path):
    model = _model(**overrides)
    spec = spec_from_backbone(model, iteration=7, train_img_size=28)
    assert (spec.arch, spec.embed_dim, spec.depth, spec.num_heads) == ("vit_small", 384, 2, 6)
    path = tmp_path / "m.safetensors.json"
    path.write_text(spec.to_json())
    again = BackboneSpec.from_json_file(path)
    assert again == spec
    assert _shapes(DinoVisionTransformer(**again.backbone_kwargs())) == _shapes(model)


def test_a_dinov2_state_dict_gives_its_architecture():
    model = _model(num_register_tokens=4)
    spec = spec_from_state_dict(model.state_dict())
    assert (spec.embed_dim, spec.depth, spec.patch_size, spec.img_size, spec.num_register_tokens) == (384, 2, 14, 28, 4)
    assert spec.num_heads == 6 and spec.layerscale is not None and spec.source == "dinov2"
    state = model.state_dict()
    del state["blocks.1.norm1.weight"]  # still two blocks
    state["blocks.5.norm1.weight"] = torch.zeros(384)  # a lone far block: not a 6-block model
    with pytest.raises(ExportFormatError, match=r"blocks are not numbered 0..N-1 \(missing blocks \[2, 3, 4\]"):
        spec_from_state_dict(state, origin="x.pth")


def test_a_state_dict_that_is_not_a_backbone_is_named():
    with pytest.raises(
        ExportFormatError, match=r"x.pth: not a DINOv2/dinolite backbone state dict: missing \['pos_embed'"
    ):
        spec_from_state_dict({"fc.weight": torch.zeros(2, 2)}, origin="x.pth")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a dinolite backbone record"),
        ({"format_version": FORMAT_VERSION + 1}, "newer than this dinolite reads"),
        ({"colour": "red"}, r"unknown fields \['colour'\]"),
        ({"depth": None}, "depth=None is not valid"),
        ({"embed_dim": "missing"}, r"incomplete backbone record: missing \['embed_dim'\]"),
    ],
)
def test_a_foreign_newer_or_bad_record_is_refused_naming_the_file(change, message):
    data = {**json.loads(spec_from_backbone(_model()).to_json()), **change}
    data = {key: value for key, value in data.items() if value != "missing"}
    with pytest.raises(ExportFormatError, match=f"rec.json: .*{message}"):
        BackboneSpec.from_mapping(data, origin="rec.json")


@pytest.mark.parametrize(
    ("field", "value", "evidence"),
    [("depth", 40, "2 blocks"), ("embed_dim", 1536, "width 384"), ("img_size", 518, "4 position-embedding patches")],
)
def test_a_record_that_does_not_describe_the_weights_is_refused_before_building(field, value, evidence):
    model = _model()
    spec = spec_from_backbone(model)
    setattr(spec, field, value)
    with pytest.raises(
        ExportFormatError, match=f"rec.json: {field}={value} but the weights in w.safetensors have {evidence}"
    ):
        check_spec_against_shapes(spec, _shapes(model), "rec.json", "w.safetensors")
    check_spec_against_shapes(spec_from_backbone(model), _shapes(model), "rec.json", "w.safetensors")


@pytest.mark.parametrize("registers", [0, 2])
def test_a_cls_free_backbone_is_recorded_inferred_and_checked(registers, tmp_path):
    """A CLS-free encoder (the released I-JEPA's layout): its table has no CLS row, which the record says, the
    state-dict inference reads from the keys and shapes, and the shape check holds the record to."""
    model = _model(num_register_tokens=registers, cls_token=False)
    spec = spec_from_backbone(model)
    assert spec.cls_token is False and spec.img_size == 28
    path = tmp_path / "m.safetensors.json"
    path.write_text(spec.to_json())
    again = BackboneSpec.from_json_file(path)
    assert again == spec and _shapes(DinoVisionTransformer(**again.backbone_kwargs())) == _shapes(model)
    inferred = spec_from_state_dict(model.state_dict())
    assert (inferred.cls_token, inferred.img_size, inferred.embed_dim, inferred.num_register_tokens) == (
        False,
        28,
        384,
        registers,
    )
    assert spec_from_state_dict(_model().state_dict()).cls_token is True
    check_spec_against_shapes(spec, _shapes(model), "record", "weights")
    with pytest.raises(ExportFormatError, match="cls_token=False but the weights in weights have a cls_token"):
        check_spec_against_shapes(spec, _shapes(_model(num_register_tokens=registers)), "record", "weights")
    lying = {**model.state_dict(), "cls_token": torch.zeros(1, 1, 384)}
    with pytest.raises(ExportFormatError, match="pos_embed has no CLS row but the state dict has a cls_token"):
        spec_from_state_dict(lying, origin="x.pth")


def test_a_cls_free_backbone_round_trips_through_safetensors_and_is_refused_by_timm_and_transformers(tmp_path):
    from dinolite.export.hub import write_transformers_folder
    from dinolite.export.load import load_backbone
    from dinolite.export.writers import write_safetensors, write_timm

    torch.manual_seed(0)
    model = _model(cls_token=False).eval()
    spec = spec_from_backbone(model)
    write_safetensors(model.state_dict(), spec, tmp_path / "m.safetensors")
    loaded = load_backbone(tmp_path / "m.safetensors")
    x = torch.randn(1, 3, 42, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    for write, name in ((write_timm, "t.safetensors"), (write_transformers_folder, "hf")):
        with pytest.raises(ExportFormatError, match="always have a CLS token; this backbone has none"):
            write(model.state_dict(), spec, tmp_path / name)
        assert not (tmp_path / name).exists()  # refused before anything is written


def test_a_shared_relative_bias_backbone_round_trips_through_safetensors_and_pth_and_is_refused_by_timm_and_transformers(
    tmp_path,
):
    """SimMIM's ViT (``pos_embed_type="shared_rel_pos_bias"``): the record says ``position``, a DINOv2-layout
    ``.pth`` is recognised by its table's key, both rebuild the same features; timm / transformers / ONNX refuse."""
    from dinolite.export.hub import write_transformers_folder
    from dinolite.export.load import load_backbone
    from dinolite.export.writers import write_dinov2, write_onnx, write_safetensors, write_timm

    torch.manual_seed(0)
    model = _model(pos_embed_type="shared_rel_pos_bias").eval()
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()  # a trained bias, not the zero start
    spec = spec_from_backbone(model)
    assert spec.position == "shared_rel_pos_bias"
    assert spec_from_backbone(_model()).position == "absolute"
    write_safetensors(model.state_dict(), spec, tmp_path / "m.safetensors")
    write_dinov2(model.state_dict(), tmp_path / "m.pth")
    assert spec_from_state_dict(model.state_dict()).position == "shared_rel_pos_bias"
    x = torch.randn(1, 3, 28, 28)
    for path in (tmp_path / "m.safetensors", tmp_path / "m.pth"):
        with torch.no_grad():
            torch.testing.assert_close(load_backbone(path)(x), model(x), rtol=0, atol=0)
    for write, name in ((write_timm, "t.safetensors"), (write_transformers_folder, "hf")):
        with pytest.raises(ExportFormatError, match="absolute position table only; this backbone has none"):
            write(model.state_dict(), spec, tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(ExportFormatError, match="ONNX export has an absolute position table only"):
        write_onnx(model, spec, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
