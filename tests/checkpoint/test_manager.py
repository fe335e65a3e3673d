"""CheckpointManager: save then load gives the same weights, optimizer moments and progress; pruning keeps
the newest ``keep_last``; ``latest`` names the newest save. (Resume inside training, several ranks and
hostile folders are tested in tests/train/test_checkpoint.py and test_hostile_checkpoint.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dinolite.checkpoint.errors import CheckpointError
from dinolite.checkpoint.layout import LATEST_POINTER, STATE_FILE, iteration_dirname
from dinolite.checkpoint.manager import CheckpointManager


class Progress:
    """A Stateful entry mixing a tensor leaf (to DCP) and a JSON leaf (to state.json)."""

    def __init__(self) -> None:
        self.state = {"seen": torch.tensor([0.0]), "phase": "warmup"}

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)


def _app_state(seed: int) -> dict:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"model": model, "optimizer": optimizer, "progress": Progress()}


def test_save_then_load_restores_weights_optimizer_and_stateful_entries(tmp_path):
    saved = _app_state(seed=0)
    saved["progress"].state = {"seen": torch.tensor([12.0]), "phase": "cosine"}
    path = CheckpointManager(tmp_path).save(5, saved, batches_consumed=7)
    info = json.loads((path / STATE_FILE).read_text())
    assert path.name == iteration_dirname(5) and info["iteration"] == 5 and info["batches_consumed"] == 7

    loaded = _app_state(seed=1)  # other weights and moments
    CheckpointManager(tmp_path).load(path, loaded)
    for a, b in zip(saved["model"].parameters(), loaded["model"].parameters(), strict=True):
        assert torch.equal(a, b)
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in saved["optimizer"].state.values()]
    restored = [(s["exp_avg"], s["exp_avg_sq"]) for s in loaded["optimizer"].state.values()]
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(moments, restored, strict=True))
    assert torch.equal(loaded["progress"].state["seen"], torch.tensor([12.0]))
    assert loaded["progress"].state["phase"] == "cosine"


def test_pruning_keeps_the_newest_and_latest_names_the_last_save(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    app_state = _app_state(seed=0)
    for iteration in (1, 2, 3):
        manager.save(iteration, app_state)
    assert [p.name for p in manager.checkpoints()] == [iteration_dirname(2), iteration_dirname(3)]
    assert (manager.directory / LATEST_POINTER).read_text().strip() == iteration_dirname(3)
    assert manager.latest() == manager.directory / iteration_dirname(3)


def test_the_newest_intact_checkpoint_is_loaded_and_none_without_any(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=0)
    assert manager.load_latest_intact(_app_state(seed=0)) is None
    manager.save(1, _app_state(seed=0))
    newest = _app_state(seed=2)
    manager.save(2, newest)
    loaded = _app_state(seed=3)
    path, _ = manager.load_latest_intact(loaded)
    assert path.name == iteration_dirname(2)
    assert torch.equal(loaded["model"].weight, newest["model"].weight)


def test_a_negative_keep_last_and_a_non_module_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_last=-1"):
        CheckpointManager(tmp_path, keep_last=-1)
    with pytest.raises(CheckpointError, match="app_state\\['model'\\] must be the objective"):
        CheckpointManager(tmp_path).save(1, {"model": {"weight": torch.zeros(1)}})
