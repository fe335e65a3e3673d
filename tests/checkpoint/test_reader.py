"""Reading a run's checkpoint without the trainer: which folder, its state, its method record, its weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.checkpoint.errors import CheckpointError, CheckpointNotFoundError
from dinolite.checkpoint.layout import iteration_dirname
from dinolite.checkpoint.manager import CheckpointManager
from dinolite.checkpoint.reader import (
    checkpoint_modules,
    load_consolidated_state_dict,
    method_record,
    read_checkpoint_info,
    resolve_checkpoint_dir,
)


class Objective(nn.Module):
    """The shape every method's objective has: student and teacher, each a backbone and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.ModuleDict({"backbone": nn.Linear(3, 4), "proj_head": nn.Linear(4, 2)})
        self.teacher = nn.ModuleDict({"backbone": nn.Linear(3, 4)})


RECORD = {"name": "byol", "eval_network": "student", "heads": ["proj_head"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    manager = CheckpointManager(root, method=RECORD)
    objective = Objective()
    for iteration in (2, 4):
        manager.save(iteration, {"model": objective}, batches_consumed=iteration * 3)
    return root, objective


def test_a_run_its_checkpoints_folder_and_one_checkpoint_all_resolve(run):
    root, _ = run
    newest = root / "checkpoints" / iteration_dirname(4)
    assert resolve_checkpoint_dir(root) == newest
    assert resolve_checkpoint_dir(root / "checkpoints") == newest
    older = root / "checkpoints" / iteration_dirname(2)
    assert resolve_checkpoint_dir(older) == older


def test_a_folder_without_a_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=str(tmp_path)):
        resolve_checkpoint_dir(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        read_checkpoint_info(tmp_path / "gone")


def test_state_and_method_record_read_back(run):
    root, _ = run
    info = read_checkpoint_info(resolve_checkpoint_dir(root))
    assert (info["iteration"], info["batches_consumed"], info["world_size"]) == (4, 12, 1)
    assert method_record(root) == RECORD
    assert checkpoint_modules(root, "student") == ["backbone", "proj_head"]
    assert checkpoint_modules(root, "teacher") == ["backbone"]


def test_consolidated_weights_equal_the_saved_module(run):
    root, objective = run
    backbone = load_consolidated_state_dict(root, model="student")
    assert backbone.keys() == objective.student["backbone"].state_dict().keys()
    assert all(torch.equal(backbone[k], v) for k, v in objective.student["backbone"].state_dict().items())
    whole = load_consolidated_state_dict(root, model="student", part=None)
    assert set(whole) == {"backbone.weight", "backbone.bias", "proj_head.weight", "proj_head.bias"}


def test_a_network_that_is_not_saved_is_named_with_the_ones_that_are(run):
    root, _ = run
    with pytest.raises(CheckpointError, match="models in this checkpoint: student, teacher"):
        load_consolidated_state_dict(root, model="target")
    assert load_consolidated_state_dict(root, model="target", missing_ok=True) == {}
