"""load_backbone checks the architecture record against the tensor shapes before building any model
(issue 16, item 11): a tampered 1 KB JSON asking for width 2048 must not allocate a 3 GB model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dinolite.export import load as load_module
from dinolite.export.load import (
    SPEC_METADATA_KEY,
    load_backbone,
    load_pretrained,
    spec_path_for,
)
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.models import DinoVisionTransformer


def tiny() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=4, init_values=1e-5)


@pytest.fixture
def no_real_model(monkeypatch):
    """Fail the test if a backbone is built anywhere but on the meta device (where nothing is allocated)."""
    built = []

    class Guarded(DinoVisionTransformer):
        def __init__(self, **kwargs):
            device = torch.empty(0).device
            built.append((device.type, kwargs["embed_dim"], kwargs["depth"]))
            if device.type != "meta":
                raise AssertionError(f"a real model of width {kwargs['embed_dim']} was built before the check")
            super().__init__(**kwargs)

    monkeypatch.setattr(load_module, "DinoVisionTransformer", Guarded)
    return built


def export_without_header_record(tmp_path, record_changes: dict) -> tuple:
    """An export whose record lives only in the sidecar JSON (as for files written by other tools)."""
    model = tiny()
    record = json.loads(spec_from_backbone(model).to_json())
    weights = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(weights))
    record.update(record_changes)
    spec_path_for(weights).write_text(json.dumps(record))
    return model, weights


def test_sidecar_asking_for_width_2048_fails_before_any_model_is_built(tmp_path, no_real_model):
    """The issue's attack: a 1 KB JSON asking for a ViT-g-sized model next to small weights."""
    _, weights = export_without_header_record(tmp_path, {"embed_dim": 2048, "depth": 40, "num_heads": 32})
    sidecar = spec_path_for(weights)
    assert sidecar.stat().st_size < 1024
    with pytest.raises(ExportFormatError) as info:
        load_backbone(weights)
    message = str(info.value)
    assert str(sidecar) in message and "embed_dim=2048" in message and "width 64" in message
    assert str(weights) in message
    assert no_real_model == []  # not even a meta model: the header shapes sufficed


@pytest.mark.parametrize(
    "changes,field,actual",
    [
        ({"depth": 200}, "depth=200", "2 blocks"),
        ({"img_size": 14 * 400}, "img_size=5600", "4 position-embedding patches"),
        ({"patch_size": 7}, "patch_size=7", "14-pixel patches"),
        ({"num_register_tokens": 100000}, "num_register_tokens=100000", "0 register tokens"),
        ({"ffn_layer": "swiglu"}, "ffn_layer='swiglu'", "an MLP FFN"),
    ],
)
def test_every_size_field_is_checked_against_the_shapes(tmp_path, no_real_model, changes, field, actual):
    _, weights = export_without_header_record(tmp_path, changes)
    with pytest.raises(ExportFormatError, match=f"{field}.*{actual}"):
        load_backbone(weights)
    assert no_real_model == []


def test_a_field_only_the_full_shape_check_sees_is_refused_on_meta(tmp_path, no_real_model):
    _, weights = export_without_header_record(tmp_path, {"mlp_ratio": 8.0})  # in range (1000 is refused first)
    with pytest.raises(ExportFormatError, match=r"blocks\.0\.mlp\.fc1\.weight: file \(256, 64\) vs model \(512, 64\)"):
        load_backbone(weights)
    assert no_real_model and all(device == "meta" for device, _, _ in no_real_model)


def test_tampered_header_record_is_checked_too(tmp_path, no_real_model):
    model = tiny()
    record = json.loads(spec_from_backbone(model).to_json())
    record["embed_dim"] = 2048
    weights = tmp_path / "h.safetensors"
    save_file(model.state_dict(), str(weights), metadata={SPEC_METADATA_KEY: json.dumps(record)})
    with pytest.raises(
        ExportFormatError, match=rf"h\.safetensors \(header metadata '{SPEC_METADATA_KEY}'\): embed_dim=2048"
    ):
        load_pretrained(weights)  # the training path (student.pretrained_weights) reads the same record
    save_file(model.state_dict(), str(weights), metadata={SPEC_METADATA_KEY: "{not json"})
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        load_backbone(weights)


def test_invalid_sizes_and_heads_are_refused(tmp_path):
    _, weights = export_without_header_record(tmp_path, {"num_heads": 3})
    with pytest.raises(ExportFormatError, match="num_heads=3 does not divide embed_dim=64"):
        load_backbone(weights)
    _, weights = export_without_header_record(tmp_path, {"depth": "2"})
    with pytest.raises(ExportFormatError, match="m.safetensors.json: depth='2' is not valid: expected an integer >= 1"):
        load_backbone(weights)


def test_an_honest_sidecar_still_loads_identically(tmp_path):
    model, weights = export_without_header_record(tmp_path, {})
    loaded = load_backbone(weights)
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images), rtol=0, atol=0)
