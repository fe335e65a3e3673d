"""A step that breaks the weights never reaches a checkpoint (issue 16, item 2)."""

from __future__ import annotations

import pytest
import torch
from test_loop import tiny_config, train
from torch import nn

from dinolite.checkpoint import CheckpointManager, load_consolidated_state_dict
from dinolite.train.finite_check import NonFiniteStateError, check_finite_parameters

pytestmark = pytest.mark.numerics  # which check fires, and where, is what these tests pin


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _all_finite(checkpoint) -> bool:
    tensors = load_consolidated_state_dict(checkpoint, model="student", part=None)
    tensors.update(load_consolidated_state_dict(checkpoint, model="teacher", part=None))
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def break_a_backbone_weight(monkeypatch, iteration: int, value: float) -> None:
    """The AdamW step of ``iteration`` (a fresh run's step number ``iteration + 1``) writes ``value`` into
    the first element of the first parameter group's first tensor (a backbone weight) after stepping."""
    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def breaking_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == iteration + 1:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = value
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", breaking_step)


def test_a_step_that_breaks_the_weights_stops_before_its_checkpoint(tmp_path, monkeypatch):
    """The issue's recipe (a huge learning rate breaks the weights), made independent of rounding.

    The optimizer step of iteration 1, whose result the checkpoint of iteration 2 would hold, leaves an
    inf in a backbone weight (what an overflowing update does). The run stops on the weights in that
    iteration and writes no checkpoint; before issue 16 it went on to a NaN loss and a NaN ``latest``.
    Provoking it with lr=1e4 from the start left it to the CPU's rounding whether the weights or the next
    loss broke first (on an AMX Xeon the loss check fired at iteration 4).
    """
    cfg = tiny_config(tmp_path, "train.checkpoint_every=2", "train.keep_last_checkpoints=1")
    break_a_backbone_weight(monkeypatch, iteration=1, value=float("inf"))
    with pytest.raises(NonFiniteStateError) as info:
        train(cfg)
    message = str(info.value)
    assert "backbone weights [backbone." in message and "optimizer step of iteration 1" in message, message
    assert CheckpointManager(tmp_path).latest() is None
    assert not list((tmp_path / "checkpoints").glob("iter_*"))


def test_a_good_checkpoint_stays_latest_when_a_later_step_breaks(tmp_path, monkeypatch):
    """Iterations 0-1 are fine (checkpoint at 2), the step of iteration 2 writes a NaN: latest stays 2."""
    cfg = tiny_config(tmp_path, "train.checkpoint_every=2", "train.keep_last_checkpoints=1")
    break_a_backbone_weight(monkeypatch, iteration=2, value=float("nan"))
    with pytest.raises(NonFiniteStateError, match="iteration 2"):
        train(cfg)
    latest = CheckpointManager(tmp_path).latest()
    assert latest is not None and latest.name == "iter_00000002" and _all_finite(latest)
    assert not (tmp_path / "checkpoints" / "iter_00000003").exists()


def test_check_names_module_weights_and_gradients():
    torch.manual_seed(0)
    modules = {"backbone": nn.Linear(4, 4), "head": nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))}
    for module in modules.values():
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
    check_finite_parameters(modules, 5, torch.device("cpu"))  # all finite: no error
    with torch.no_grad():
        modules["head"][1].bias[0] = float("inf")
    modules["backbone"].weight.grad[1, 2] = float("nan")
    with pytest.raises(NonFiniteStateError) as info:
        check_finite_parameters(modules, 5, torch.device("cpu"))
    message = str(info.value)
    assert "backbone gradients [backbone.weight]" in message
    assert "head weights [head.1.bias]" in message
    assert "backbone weights" not in message and "head gradients" not in message


def test_huge_but_finite_values_are_not_reported():
    """The fast path sums each tensor; a sum that overflows on finite values is confirmed element-wise."""
    module = nn.Linear(2, 2)
    with torch.no_grad():
        module.weight.fill_(3e38)  # finite; the float32 sum overflows to inf
    assert not torch.isfinite(module.weight.sum())
    check_finite_parameters({"backbone": module}, 0, torch.device("cpu"))
