"""The shared EMA update: by name, teacher subset of the student, errors that name the parameter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dinolite.train.ema import ema_update


def student_with_predictor() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"backbone": nn.Linear(4, 3), "projector": nn.Linear(3, 2), "predictor": nn.Linear(2, 2)})


def test_teacher_moves_towards_student_by_name_and_predictor_is_ignored():
    student = student_with_predictor()
    # The teacher lacks the predictor and lists its modules in another order than the student.
    teacher = nn.ModuleDict(
        {"projector": copy.deepcopy(student["projector"]), "backbone": copy.deepcopy(student["backbone"])}
    )
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(-1.0)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    student_params = dict(student.named_parameters())
    ema_update(teacher, student, momentum=0.75)
    for name, param in teacher.named_parameters():
        expected = 0.75 * before[name] + 0.25 * student_params[name].detach()
        assert torch.equal(param, expected), name


def test_momentum_one_keeps_the_teacher_and_zero_copies_the_student():
    student = student_with_predictor()
    teacher = nn.ModuleDict({"backbone": nn.Linear(4, 3)})
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=1.0)
    assert all(torch.equal(p, b) for p, b in zip(teacher.parameters(), before))
    ema_update(teacher, student, momentum=0.0)
    assert torch.equal(teacher["backbone"].weight, student["backbone"].weight)


def test_teacher_parameter_without_student_counterpart_is_named():
    student = nn.ModuleDict({"backbone": nn.Linear(4, 3)})
    teacher = nn.ModuleDict({"backbone": nn.Linear(4, 3), "head": nn.Linear(3, 2)})
    with pytest.raises(KeyError, match="head.weight"):
        ema_update(teacher, student, momentum=0.9)
    with pytest.raises(RuntimeError, match="backbone.weight"):
        ema_update(nn.ModuleDict({"backbone": nn.Linear(5, 3)}), student, momentum=0.9)
