"""Evaluation's one way to get a backbone: from an export or a run's checkpoint, frozen, finite, the
network asked for; and a fingerprint that changes when the weights do."""

from __future__ import annotations

import pytest
import torch

from dinolite.eval.backbone import BackboneError, backbone_fingerprint, load_any_backbone
from dinolite.eval.finite import NonFiniteError
from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import DinoVisionTransformer
from tests.checkpoint.tiny_run import make_tiny_run


def _export(path, source="teacher", poison=False):
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=384, depth=1, num_heads=6)
    state = model.state_dict()
    if poison:
        state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
    write_safetensors(state, spec_from_backbone(model, source=source), path)
    return model, path


def test_an_export_loads_frozen_in_eval_mode_with_its_weights(tmp_path):
    model, path = _export(tmp_path / "t.safetensors")
    loaded = load_any_backbone(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in model.state_dict().items())


def test_another_network_than_the_export_holds_is_refused(tmp_path):
    _, path = _export(tmp_path / "t.safetensors", source="teacher")
    with pytest.raises(BackboneError, match="holds the teacher backbone, not the student"):
        load_any_backbone(path, network="student")
    with pytest.raises(BackboneError, match="network 'target': expected one of teacher, student"):
        load_any_backbone(path, network="target")
    with pytest.raises(FileNotFoundError, match="--backbone .*gone.safetensors: no such file"):
        load_any_backbone(tmp_path / "gone.safetensors")


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    _, path = _export(tmp_path / "nan.safetensors", poison=True)
    with pytest.raises(NonFiniteError, match="norm.weight"):
        load_any_backbone(path)


def test_a_run_directory_gives_the_methods_evaluated_network(tmp_path):
    run = make_tiny_run(tmp_path / "run", iterations=(2,))
    assert load_any_backbone(run).spec.source == "teacher"  # DINOv2 evaluates its teacher
    assert load_any_backbone(run, network="student").spec.source == "student"


def test_the_fingerprint_follows_the_file_content_and_the_newest_checkpoint(tmp_path):
    _, path = _export(tmp_path / "t.safetensors")
    first = backbone_fingerprint(path)
    assert backbone_fingerprint(path) == first
    _export(path, source="student")  # same name, other content
    assert backbone_fingerprint(path) != first
    run = make_tiny_run(tmp_path / "run", iterations=(2,))
    before = backbone_fingerprint(run)
    make_tiny_run(run, iterations=(4,))
    assert backbone_fingerprint(run) != before
