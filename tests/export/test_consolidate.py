"""A sharded training checkpoint becomes one backbone (+ heads and extra state) with its architecture record."""

from __future__ import annotations

import pytest
import torch

from dinolite.checkpoint import CONFIG_FILE, resolve_checkpoint_dir
from dinolite.export.consolidate import consolidate_checkpoint
from tests.checkpoint.tiny_run import make_tiny_run, tiny_manager


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"), iterations=(2, 4))


def test_the_default_network_is_the_methods_and_equals_the_saved_weights(run, tmp_path):
    weights = consolidate_checkpoint(run)
    assert weights.spec.source == "teacher" and weights.spec.iteration == 4  # DINOv2 evaluates its teacher
    assert weights.heads is None
    _, app_state = tiny_manager(tmp_path)  # the same seeded objective make_tiny_run saved
    saved = app_state["model"].teacher.backbone.state_dict()
    assert weights.backbone.keys() == saved.keys()
    assert all(torch.equal(weights.backbone[key], value) for key, value in saved.items())


def test_heads_and_extra_state_come_with_the_backbone_on_request(run):
    weights = consolidate_checkpoint(run, model="student", with_heads=True)
    assert weights.spec.source == "student"
    assert weights.heads is not None and any(key.startswith("dino_head.") for key in weights.heads)
    assert any(key.startswith("extra.") for key in weights.heads)  # DINO's centres: training can continue
    assert weights.spec.extra["method"] == "dinov2" and "dino_head" in weights.spec.extra["heads"]


def test_an_older_checkpoint_directory_is_taken_as_given(run):
    older = resolve_checkpoint_dir(run).with_name("iter_00000002")
    assert consolidate_checkpoint(older).spec.iteration == 2


def test_an_unknown_network_and_a_checkpoint_without_config_are_refused(run, tmp_path):
    with pytest.raises(ValueError, match="network 'target': expected one of teacher, student"):
        consolidate_checkpoint(run, model="target")
    bare = make_tiny_run(tmp_path / "bare", iterations=(1,))
    (resolve_checkpoint_dir(bare) / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no config.yaml; is this a dinolite training checkpoint"):
        consolidate_checkpoint(bare)
