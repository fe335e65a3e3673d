"""dinolite/train/objective.py: the contract between an objective and the loop, and its defaults."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dinolite.train.objective import ObjectiveOutput, SSLObjective


class _Regression(SSLObjective):
    """The smallest objective: a student with a backbone and a head, no teacher, no hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": nn.Linear(3, 2), "head": nn.Linear(2, 1)})
        self.teacher = nn.ModuleDict()

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        loss = self.student["head"](self.student["backbone"](batch["x"])).pow(2).mean()
        return ObjectiveOutput(loss=loss, terms={"mse": loss.detach()})


def test_an_objective_must_define_its_forward() -> None:
    with pytest.raises(TypeError, match="abstract"):
        SSLObjective()  # type: ignore[abstract]


def test_the_output_holds_the_loss_its_terms_and_by_default_no_diagnostics() -> None:
    out = _Regression()({"x": torch.ones(4, 3)}, iteration=0)
    assert out.diagnostics == {} and torch.equal(out.terms["mse"], out.loss.detach())
    assert ObjectiveOutput(out.loss, {}).diagnostics is not ObjectiveOutput(out.loss, {}).diagnostics


def test_the_default_hooks_leave_parameters_gradients_and_optimizer_alone() -> None:
    objective = _Regression()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    objective({"x": torch.ones(4, 3)}, 0).loss.backward()
    params = [p.detach().clone() for p in objective.parameters()]
    grads = [p.grad.clone() for p in objective.parameters()]
    objective.after_backward(0, optimizer)
    objective.after_optimizer_step(0)
    assert all(torch.equal(a, p) for a, p in zip(params, objective.parameters()))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, objective.parameters()))
    assert optimizer.param_groups[0]["lr"] == 0.1 and objective.schedule_values(5) == {}


def test_every_student_module_is_trained_by_name() -> None:
    objective = _Regression()
    assert objective.trainable_modules() == {
        "backbone": objective.student["backbone"],
        "head": objective.student["head"],
    }


def test_no_extra_state_by_default_and_unexpected_state_is_refused_naming_the_keys() -> None:
    objective = _Regression()
    assert objective.extra_state() == {}
    objective.load_extra_state({})
    with pytest.raises(ValueError, match=r"_Regression has no extra state but got keys \['center', 'step'\]"):
        objective.load_extra_state({"step": torch.zeros(1), "center": torch.zeros(2)})
