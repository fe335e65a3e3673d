"""Loading an export: the record in the safetensors header suffices and wins over a sidecar; another architecture, a truncated file, a foreign or pickled file fail naming the file."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from dinolite.export.load import load_backbone, load_backbone_state_dict
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.export.writers import write_safetensors
from tests.export.test_writers import _tiny


def test_spec_in_safetensors_metadata_suffices_without_json(tmp_path):
    model = _tiny(embed_dim=96, num_heads=3)  # not a DINOv2 width: shapes alone cannot give the heads
    write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors.json").unlink()
    loaded = load_backbone(tmp_path / "b.safetensors")
    assert loaded.spec.num_heads == 3


def test_safetensors_header_wins_over_a_sidecar(tmp_path):
    # A stale or foreign NAME.json beside the weights (e.g. the record of another export of the same
    # stem) must not relabel them: the header was written with the weights.
    model = _tiny()
    write_safetensors(model.state_dict(), spec_from_backbone(model, source="teacher"), tmp_path / "m.safetensors")
    stale = json.loads(spec_from_backbone(model, source="student").to_json())
    (tmp_path / "m.json").write_text(json.dumps(stale))
    (tmp_path / "m.safetensors.json").write_text(json.dumps(stale))
    assert load_backbone(tmp_path / "m.safetensors").spec.source == "teacher"


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
