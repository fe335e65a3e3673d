"""The shared EMA update: by name, teacher subset of the student, errors that name the parameter."""

from __future__ import annotations

import copy
import math

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


def test_a_parameter_the_student_does_not_train_is_left_bit_exact():
    """A fixed sine-cosine position table (``student.pos_embed=sincos``): m*x + (1-m)*x drifts in floats."""
    student = student_with_predictor()
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(student["backbone"])})
    student["backbone"].bias.requires_grad_(False)
    with torch.no_grad():  # values that m*x + (1-m)*x does not return exactly (checked: the update drifts)
        student["backbone"].bias.copy_(torch.randn(3, generator=torch.Generator().manual_seed(1)))
        teacher["backbone"].bias.copy_(student["backbone"].bias)
        teacher["backbone"].weight.zero_()
    frozen = teacher["backbone"].bias.detach().clone()
    for _ in range(5):
        ema_update(teacher, student, momentum=0.996)
    assert torch.equal(teacher["backbone"].bias, frozen)
    assert not torch.equal(teacher["backbone"].weight, torch.zeros(3, 4))  # the trained weight still moves


def test_momentum_schedule_follows_the_shared_ema_section():
    from dinolite.config import EMAConfig
    from dinolite.train.ema import momentum_schedule
    from dinolite.train.schedules import CosineSchedule

    cosine = momentum_schedule(EMAConfig(momentum=0.9, final_momentum=1.0, schedule="cosine"), 100)
    assert cosine == CosineSchedule(0.9, 1.0, 100)  # DINOv2's teacher, BYOL, MSN: the same object as before
    linear = momentum_schedule(EMAConfig(momentum=0.996, final_momentum=1.0, schedule="linear"), 8)
    # I-JEPA's released ramp: ema0 + i * (ema1 - ema0) / total, then ema1
    assert [linear(i) for i in (0, 2, 8, 9)] == [0.996, 0.996 + 2 * 0.004 / 8, 1.0, 1.0]
    with pytest.raises(ValueError, match="'ema.schedule': 'step'"):
        momentum_schedule(EMAConfig(schedule="step"), 8)


def test_momentum_schedule_horizon_lays_the_ramp_over_a_multiple_of_the_run():
    from dinolite.config import EMAConfig
    from dinolite.train.ema import momentum_schedule

    # MSN's release (msn_train.py:252-255): linear 0.996 -> 1 over 1.25 x a run of 80 iterations
    linear = momentum_schedule(
        EMAConfig(momentum=0.996, final_momentum=1.0, schedule="linear", schedule_horizon=1.25), 80
    )
    assert linear(0) == 0.996
    assert linear(40) == pytest.approx(0.996 + 0.004 * 40 / 100, abs=1e-15)
    assert linear(80) == pytest.approx(0.9992, abs=1e-15)
    assert linear(100) == 1.0
    # a cosine over 2 x the run is at its midpoint (0.5 * (0.9 + 1.0)) where the run ends
    cosine = momentum_schedule(EMAConfig(momentum=0.9, final_momentum=1.0, schedule_horizon=2.0), 50)
    assert cosine(50) == pytest.approx(0.95, abs=1e-15)
    assert cosine(25) == pytest.approx(1.0 - 0.05 * (1 + math.cos(math.pi / 4)), abs=1e-15)


def test_every_ema_method_reads_the_one_ema_section():
    from dinolite.config import load_config
    from dinolite.train.methods import get_method

    overrides = ["student.depth=1", "ema.momentum=0.5", "ema.final_momentum=0.7", "train.iterations_per_epoch=10"]
    for preset in ("demo", "demo_msn", "demo_ijepa", "demo_byol"):
        cfg = load_config(preset, overrides)
        objective = get_method(cfg.train.method).build_objective(cfg)
        total = cfg.optim.epochs * cfg.train.iterations_per_epoch
        assert objective.schedule_values(0)["momentum"] == 0.5, preset
        assert objective.schedule_values(total)["momentum"] == 0.7, preset


def test_a_schedule_horizon_that_is_not_positive_is_refused_naming_the_key():
    from dinolite.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="invalid value for 'ema.schedule_horizon': 0.0; must be > 0"):
        load_config("demo_msn", ["ema.schedule_horizon=0"])
