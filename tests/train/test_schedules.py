"""Schedules (dinolite.train.schedules): warmup start/end, cosine, hold, freeze, DINOv2 recipe."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dinolite.config import OptimConfig, load_config
from dinolite.train.methods.dinov2_objective import DINOv2Schedules
from dinolite.train.schedules import (
    CosineSchedule,
    LinearSchedule,
    TrainingSchedules,
    build_schedules,
    scaled_lr,
    stretched_iters,
)


def test_cosine_schedule_warmup_cosine_and_hold():
    s = CosineSchedule(base_value=1.0, final_value=0.0, total_iters=10, warmup_iters=4, start_warmup_value=0.0)
    assert s(0) == 0.0  # warmup start
    assert s(2) == pytest.approx(0.5)  # 0 + (1 - 0) * 2 / 4
    assert s(4) == pytest.approx(1.0)  # warmup end = first cosine step = base
    assert s(7) == pytest.approx(0.5)  # cosine step 3 of 6: 0.5 * (1 + cos(pi / 2))
    assert s(9) == pytest.approx(0.5 * (1 + math.cos(5 * math.pi / 6)))
    assert s(10) == 0.0 and s(10_000) == 0.0  # beyond the end: the final value


def test_cosine_schedule_is_pure():
    s = CosineSchedule(0.5, 0.1, total_iters=100, warmup_iters=10, start_warmup_value=0.2)
    forward = [s(i) for i in range(120)]
    assert [s(i) for i in reversed(range(120))] == forward[::-1]  # no hidden state: order does not matter


def test_cosine_schedule_freeze_then_warmup():
    s = CosineSchedule(1.0, 0.5, total_iters=8, warmup_iters=2, start_warmup_value=0.25, freeze_iters=2)
    assert [s(0), s(1)] == [0.0, 0.0]
    assert s(2) == pytest.approx(0.25) and s(3) == pytest.approx(0.625) and s(4) == pytest.approx(1.0)
    assert s(8) == 0.5


def test_cosine_schedule_without_warmup_and_constant():
    s = CosineSchedule(0.04, 0.4, total_iters=100)
    assert s(0) == pytest.approx(0.04) and s(50) == pytest.approx(0.22) and s(100) == pytest.approx(0.4)


def test_cosine_schedule_rejects_bad_lengths():
    with pytest.raises(ValueError, match="exceed total_iters"):
        CosineSchedule(1.0, 0.0, total_iters=5, warmup_iters=4, freeze_iters=2)
    with pytest.raises(ValueError, match="iteration must be >= 0"):
        CosineSchedule(1.0, 0.0, total_iters=5)(-1)


def test_lr_scaling_rules():
    assert scaled_lr(0.004, "sqrt_wrt_1024", 256) == pytest.approx(0.002)
    assert scaled_lr(0.004, "linear_wrt_1024", 256) == pytest.approx(0.001)
    assert scaled_lr(0.004, "none", 256) == 0.004
    with pytest.raises(ValueError, match="optim.scaling_rule.*'cubic'"):
        scaled_lr(0.004, "cubic", 256)


def test_build_schedules_follows_the_dinov2_recipe():
    optim = OptimConfig()  # defaults: DINOv2's ViT-L recipe
    ipe = 10  # iterations per "epoch"
    total = optim.epochs * ipe
    s = build_schedules(optim, iterations_per_epoch=ipe, global_batch_size=256)
    assert isinstance(s, TrainingSchedules)
    peak = 0.004 * math.sqrt(256 / 1024)
    # lr: 0 at the start, peak at the end of the 10 warmup epochs, min_lr (unscaled) at the end
    assert s.lr(0) == 0.0
    assert s.lr(optim.warmup_epochs * ipe // 2) == pytest.approx(peak / 2)
    assert s.lr(optim.warmup_epochs * ipe) == pytest.approx(peak)
    assert s.lr(total) == optim.min_lr and s.lr(total + 5) == optim.min_lr
    # weight decay 0.04 -> 0.4 by cosine over the whole run
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(total // 2) == pytest.approx(0.22)
    assert s.weight_decay(total) == pytest.approx(0.4)
    assert s.at(ipe) == {"lr": s.lr(ipe), "weight_decay": s.weight_decay(ipe)}


def test_dinov2_teacher_schedules_follow_the_recipe():
    cfg = load_config("default", ["train.iterations_per_epoch=10"])
    ipe, total = 10, cfg.optim.epochs * 10
    s = DINOv2Schedules.from_config(cfg)
    # teacher momentum 0.992 -> 1 by cosine over the whole run
    assert s.momentum(0) == pytest.approx(0.992) and s.momentum(total) == 1.0
    # teacher temperature: linear 0.04 -> 0.07 over 30 epochs, then constant
    assert s.teacher_temp(0) == pytest.approx(0.04)
    assert s.teacher_temp(15 * ipe) == pytest.approx(0.055)
    assert s.teacher_temp(30 * ipe) == pytest.approx(0.07) and s.teacher_temp(total) == pytest.approx(0.07)
    # prototype layer frozen during the first epoch
    assert s.freeze_last_layer_iters == ipe
    no_warmup = DINOv2Schedules.from_config(
        load_config("default", ["teacher.warmup_teacher_temp_epochs=0", "optim.freeze_last_layer_epochs=0"])
    )
    assert no_warmup.teacher_temp(0) == pytest.approx(0.07) and no_warmup.freeze_last_layer_iters == 0


def test_build_schedules_without_warmups():
    optim = dataclasses.replace(
        OptimConfig(), epochs=2, warmup_epochs=0, freeze_last_layer_epochs=0, scaling_rule="none"
    )
    s = build_schedules(optim, iterations_per_epoch=5, global_batch_size=8)
    assert s.lr(0) == pytest.approx(0.004)
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        build_schedules(optim, iterations_per_epoch=0, global_batch_size=8)


def test_linear_schedule_over_a_stretched_horizon_stops_where_the_run_ends():
    # MSN's released ramp: 0.996 + i * (1 - 0.996) / (ipe * epochs * 1.25) over a run of 100 iterations
    ramp = LinearSchedule(0.996, 1.0, stretched_iters(100, 1.25))
    assert stretched_iters(100, 1.25) == 125.0
    assert ramp(0) == 0.996
    assert ramp(50) == pytest.approx(0.996 + 0.004 * 50 / 125, abs=1e-15)
    assert ramp(99) == pytest.approx(0.996 + 0.004 * 99 / 125, abs=1e-15)  # the run's last step
    assert ramp(100) == pytest.approx(0.9992, abs=1e-15)  # 0.996 + 0.004 / 1.25, short of 1
    assert ramp(125) == 1.0 and ramp(200) == 1.0
    assert stretched_iters(7, 1.0) == 7  # horizon 1: the run itself
    for bad in ((-1, 1.0), (10, 0.0), (10, float("nan"))):
        with pytest.raises(ValueError, match="stretched_iters"):
            stretched_iters(*bad)
