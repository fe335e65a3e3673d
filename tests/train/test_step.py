"""dinolite/train/step.py: one generic optimizer step, the loop's only view of an objective."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.schedules import TrainingSchedules
from dinolite.train.step import (
    NonFiniteLossError,
    TrainingStep,
    check_finite,
    clip_gradients,
    seed_step,
    to_device,
)


class _Linear(SSLObjective):
    """loss = mean((w x)^2) * scale; records the hook calls the loop must make, in order."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": nn.Linear(2, 2, bias=False), "head": nn.Linear(2, 1, bias=False)})
        self.teacher = nn.ModuleDict()
        self.scale = scale
        self.calls: list[str] = []

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        self.calls.append("forward")
        loss = self.student["head"](self.student["backbone"](batch["x"])).pow(2).mean() * self.scale
        return ObjectiveOutput(loss, {"sq": loss.detach()})

    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append(f"after_backward lr={optimizer.param_groups[0]['lr']:.3g}")

    def after_optimizer_step(self, iteration: int) -> None:
        self.calls.append("after_optimizer_step")

    def schedule_values(self, iteration: int) -> dict[str, float]:
        return {"own": float(iteration)}


def _step(objective: _Linear, clip_grad: float = 0.0) -> TrainingStep:
    optimizer = torch.optim.SGD(objective.student.parameters(), lr=1.0)
    schedules = TrainingSchedules(lr=lambda i: 0.1 * (i + 1), weight_decay=lambda i: 0.0)
    return TrainingStep(objective, optimizer, schedules, clip_grad)


def test_a_step_is_sgd_at_the_scheduled_lr_with_the_hooks_in_order() -> None:
    torch.manual_seed(0)
    objective = _Linear()
    before = [p.detach().clone() for p in objective.student.parameters()]
    batch = {"x": torch.randn(4, 2)}
    reference = _Linear()
    reference.load_state_dict(objective.state_dict())
    reference(batch, 0).loss.backward()
    result = _step(objective)(batch, iteration=2)
    for old, new, ref in zip(before, objective.student.parameters(), reference.student.parameters()):
        torch.testing.assert_close(new, old - 0.3 * ref.grad)
    assert objective.calls == ["forward", "after_backward lr=0.3", "after_optimizer_step"]
    assert result.values == {"lr": pytest.approx(0.3), "weight_decay": 0.0, "own": 2.0} and result.grad_norms == {}


def test_each_module_is_clipped_on_its_own_and_its_norm_logged() -> None:
    torch.manual_seed(0)
    objective = _Linear(scale=100.0)
    objective({"x": torch.randn(4, 2)}, 0).loss.backward()
    raw = {name: float(torch.linalg.vector_norm(m.weight.grad)) for name, m in objective.student.items()}
    norms = clip_gradients(dict(objective.student.items()), max_norm=0.5)
    assert norms == {f"grad_norm/{n}": pytest.approx(v) for n, v in raw.items()}
    for module in objective.student.values():
        assert float(torch.linalg.vector_norm(module.weight.grad)) == pytest.approx(0.5, rel=1e-4)
    assert clip_gradients(dict(objective.student.items()), max_norm=0.0) == {}


def test_a_non_finite_loss_stops_naming_the_iteration_and_every_term() -> None:
    output = ObjectiveOutput(
        torch.tensor(float("nan")), {"dino": torch.tensor(1.5), "koleo": torch.tensor(float("inf"))}
    )
    with pytest.raises(NonFiniteLossError, match=r"iteration 7 \(on this rank\): loss=nan, dino=1\.5, koleo=inf"):
        check_finite(output, 7, torch.device("cpu"))
    check_finite(ObjectiveOutput(torch.tensor(2.0), {}), 7, torch.device("cpu"))


def test_a_step_whose_loss_is_nan_leaves_the_weights_alone() -> None:
    objective = _Linear(scale=float("nan"))
    before = [p.detach().clone() for p in objective.student.parameters()]
    with pytest.raises(NonFiniteLossError):
        _step(objective)({"x": torch.ones(2, 2)}, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, objective.student.parameters()))


def test_step_seeds_depend_on_seed_rank_and_iteration_only() -> None:
    draws = {}
    for key in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 0)]:
        seed_step(*key)
        draws.setdefault(key, []).append(torch.rand(1).item())
    assert draws[(0, 0, 0)][0] == draws[(0, 0, 0)][1]
    assert len({values[0] for values in draws.values()}) == 4


def test_to_device_moves_tensors_and_keeps_other_values() -> None:
    moved = to_device({"x": torch.ones(1, dtype=torch.float64), "skipped_samples": [3]}, torch.device("cpu"))
    assert torch.equal(moved["x"], torch.ones(1, dtype=torch.float64)) and moved["skipped_samples"] == [3]


def _clipped_objective() -> _Linear:
    torch.manual_seed(0)
    objective = _Linear(scale=100.0)
    objective({"x": torch.randn(4, 2)}, 0).loss.backward()
    return objective


def test_joint_clipping_is_one_norm_over_the_modules_and_unclipped_modules_are_only_measured() -> None:
    """``optim.clip_grad_scope=joint`` (MSN's encoder + head, SimMIM's model): one norm over every clipped module,
    each scaled alike; ``optim.unclipped_modules`` (MSN's prototypes) keep their gradient and log its norm."""
    objective = _clipped_objective()
    grads = {name: m.weight.grad.clone() for name, m in objective.student.items()}
    total = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads.values()])))
    norms = clip_gradients(dict(objective.student.items()), max_norm=0.5, scope="joint")
    assert norms == {"grad_norm/joint": pytest.approx(total)}
    for name, module in objective.student.items():
        torch.testing.assert_close(module.weight.grad, grads[name] * 0.5 / (total + 1e-6))

    objective = _clipped_objective()
    head = objective.student["head"].weight.grad.clone()
    norms = clip_gradients(dict(objective.student.items()), max_norm=0.5, scope="joint", unclipped=("head",))
    assert norms["grad_norm/head"] == pytest.approx(float(torch.linalg.vector_norm(head)))
    assert torch.equal(objective.student["head"].weight.grad, head)
    assert float(torch.linalg.vector_norm(objective.student["backbone"].weight.grad)) == pytest.approx(0.5, rel=1e-4)


def test_per_module_clipping_leaves_unclipped_modules_alone_and_bad_values_are_named() -> None:
    objective = _clipped_objective()
    head = objective.student["head"].weight.grad.clone()
    clip_gradients(dict(objective.student.items()), max_norm=0.5, unclipped=("head",))
    assert torch.equal(objective.student["head"].weight.grad, head)
    with pytest.raises(ValueError, match="'optim.clip_grad_scope': 'global'"):
        clip_gradients(dict(objective.student.items()), 0.5, scope="global")
    with pytest.raises(ValueError, match="'optim.unclipped_modules': \\['prototypes'\\]"):
        clip_gradients(dict(objective.student.items()), 0.5, unclipped=("prototypes",))


def test_the_step_gives_fixed_lr_groups_the_peak_lr() -> None:
    """A group flagged ``fixed_lr`` (``optim.fixed_lr_modules``) steps at ``schedules.peak_lr``."""
    torch.manual_seed(0)
    objective = _Linear()
    groups = [
        {"params": list(objective.student["backbone"].parameters())},
        {"params": list(objective.student["head"].parameters()), "fixed_lr": True},
    ]
    schedules = TrainingSchedules(lr=lambda i: 0.1, weight_decay=lambda i: 0.0, peak_lr=0.7)
    step = TrainingStep(objective, torch.optim.SGD(groups, lr=1.0), schedules, 0.0)
    step({"x": torch.randn(4, 2)}, 0)
    assert [group["lr"] for group in step.optimizer.param_groups] == [0.1, 0.7]
