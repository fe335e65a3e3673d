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
    MultiStepSchedule,
    PerEpochSchedule,
    TrainingSchedules,
    WarmupCosineSchedule,
    build_schedules,
    constant_after_warmup,
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


def test_the_warmup_starts_at_warmup_start_lr_and_the_peak_is_kept():
    """I-JEPA and MSN warm up from 2e-4 (not batch-scaled) to the peak; ``peak_lr`` is the scaled base lr."""
    optim = dataclasses.replace(OptimConfig(), warmup_start_lr=2e-4, base_lr=1e-3, scaling_rule="none")
    s = build_schedules(optim, iterations_per_epoch=10, global_batch_size=256)
    warmup = optim.warmup_epochs * 10
    assert s.lr(0) == 2e-4 and s.lr(warmup // 2) == pytest.approx(6e-4) and s.lr(warmup) == pytest.approx(1e-3)
    assert s.peak_lr == 1e-3
    assert build_schedules(OptimConfig(), 10, 256).lr(0) == 0.0  # dinolite's default: from 0


def test_schedule_horizon_lays_the_cosines_out_over_more_than_the_run():
    """MSN's release: lr and weight decay over 1.25 x the run, so the run ends above min_lr / below wd_end."""
    optim = dataclasses.replace(OptimConfig(), epochs=8, warmup_epochs=0, base_lr=1e-3, scaling_rule="none", min_lr=0.0)
    plain = build_schedules(optim, iterations_per_epoch=10, global_batch_size=256)
    longer = build_schedules(dataclasses.replace(optim, schedule_horizon=1.25), 10, 256)
    assert plain.lr(80) == 0.0 and longer.lr(100) == 0.0
    assert longer.lr(80) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.8)))  # 80 of 100 iterations
    assert longer.weight_decay(80) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 0.8)))
    assert longer.lr(40) == plain.lr(32)  # the same curve, stretched


# ------------------------------------------------------------------ DINOv3's shape and constant schedules
def test_warmup_cosine_schedule_is_dinov3s_linear_warmup_cosine_decay():
    # start 0, peak 1, end 0.5: warmup 4, cosine 5 (linspace(0, pi, 5) reaches end at its last step), hold
    s = WarmupCosineSchedule(start=0.0, peak=1.0, end=0.5, warmup_iters=4, total_iters=12, cosine_iters=5)
    assert [s(i) for i in range(4)] == [0.0, 0.25, 0.5, 0.75]  # endpoint=False: peak is not reached in warmup
    assert s(4) == 1.0  # cos(0)
    assert s(6) == pytest.approx(0.75)  # cos(pi / 2): halfway between peak and end
    assert s(5) == pytest.approx(0.5 + 0.5 * (1 + math.cos(math.pi / 4)) / 2)
    assert s(8) == pytest.approx(0.5)  # cos(pi): the cosine's last step is the end value
    assert [s(i) for i in (9, 11, 12, 10_000)] == [0.5] * 4  # the constant tail, and beyond the run
    # cosine_iters None: the cosine spans the rest of the run; 1 cosine step is the peak; 0 holds the end
    assert WarmupCosineSchedule(1.0, 1.0, 0.0, 0, 3)(2) == pytest.approx(0.0)
    assert WarmupCosineSchedule(0.0, 2.0, 5.0, 2, 10, cosine_iters=1)(2) == 2.0
    assert WarmupCosineSchedule(1.5, 1.5, 1.5, 0, 10, cosine_iters=0)(0) == 1.5
    with pytest.raises(ValueError, match="warmup_iters"):
        WarmupCosineSchedule(0.0, 1.0, 0.0, warmup_iters=8, total_iters=10, cosine_iters=3)


def test_dinov3s_gram_loss_weight_schedule():
    # dinov3_vit7b16_gram_anchor.yaml: start 0, peak 0, end 2, warmup 1000 epochs, cosine 1 epoch (epoch 1000
    # iterations), shrunk 1000x: 0 for 1000 iterations, a 1000-step half-cosine up to 2, then 2
    s = WarmupCosineSchedule(0.0, 0.0, 2.0, warmup_iters=1000, total_iters=1200, cosine_iters=100)
    assert s(0) == 0.0 and s(999) == 0.0 and s(1000) == 0.0
    assert s(1099) == pytest.approx(2.0) and s(1150) == 2.0


def test_constant_after_warmup():
    s = constant_after_warmup(4.0, warmup_iters=4, total_iters=100)
    assert [s(i) for i in (0, 1, 2, 3, 4, 50, 99, 100, 10_000)] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert [constant_after_warmup(0.04, 0, 10)(i) for i in (0, 5, 20)] == [0.04, 0.04, 0.04]


def test_build_schedules_constant_is_dinov3s_recipe():
    optim = OptimConfig(base_lr=0.004, warmup_epochs=2, epochs=10, weight_decay=0.04, weight_decay_end=0.4)
    optim.schedule = "constant"
    s = build_schedules(optim, iterations_per_epoch=5, global_batch_size=1024)  # sqrt rule: peak = base
    assert s.lr(0) == 0.0 and s.lr(5) == pytest.approx(0.002) and s.lr(10) == pytest.approx(0.004)
    assert s.lr(30) == pytest.approx(0.004) and s.lr(49) == pytest.approx(0.004)
    assert {s.weight_decay(i) for i in (0, 25, 49, 50)} == {0.04}  # weight_decay_end unused
    # min_lr is unused too, so it may exceed the peak
    optim.min_lr = 1.0
    assert build_schedules(optim, 5, 1024).lr(49) == pytest.approx(0.004)
    optim.schedule = "cosine_v2"
    with pytest.raises(ValueError, match="optim.schedule"):
        build_schedules(optim, 5, 1024)


def test_constant_schedules_load_from_the_config():
    cfg = load_config("demo", ["optim.schedule=constant", "ema.schedule=constant", "ema.momentum=0.994"])
    from dinolite.train.ema import run_momentum_schedule

    momentum = run_momentum_schedule(cfg)
    total = cfg.optim.epochs * cfg.train.iterations_per_epoch
    assert {momentum(i) for i in (0, total // 2, total - 1, total)} == {0.994}
    with pytest.raises(Exception, match="optim.schedule"):
        load_config("demo", ["optim.schedule=flat"])


def test_the_constant_schedule_keeps_the_warmup_start_and_the_peak():
    """Both release rules compose: a constant schedule warms up from ``warmup_start_lr`` and reports its peak
    (the lr of ``optim.fixed_lr_modules``)."""
    optim = dataclasses.replace(
        OptimConfig(), schedule="constant", warmup_start_lr=2e-4, base_lr=1e-3, scaling_rule="none", warmup_epochs=2
    )
    s = build_schedules(optim, iterations_per_epoch=10, global_batch_size=256)
    assert s.lr(0) == 2e-4 and s.lr(10) == pytest.approx(6e-4) and s.lr(20) == 1e-3 and s.lr(99) == 1e-3
    assert s.peak_lr == 1e-3


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


def test_schedule_unit_epoch_holds_each_epochs_first_value_as_simsiams_release():
    """SimSiam's release sets ``lr = init_lr * 0.5 * (1 + cos(pi * epoch / epochs))`` once per epoch
    (main_simsiam.py:257, 359-366): with ``schedule_unit: epoch`` every iteration of epoch e has that value."""
    optim = dataclasses.replace(
        OptimConfig(), epochs=4, warmup_epochs=0, base_lr=0.1, scaling_rule="none", min_lr=0.0, schedule_unit="epoch"
    )
    s = build_schedules(optim, iterations_per_epoch=3, global_batch_size=256)
    # hand values: cos(pi * e / 4) for e = 0..3 -> 0.1, 0.1 * (1 + 0.7071) / 2, 0.05, 0.1 * (1 - 0.7071) / 2
    released = [0.1, 0.0853553390593, 0.05, 0.0146446609407]
    assert [s.lr(it) for it in range(12)] == pytest.approx([v for v in released for _ in range(3)])
    assert (
        s.weight_decay(5) == s.weight_decay(3) == pytest.approx(0.04 + (0.4 - 0.04) * 0.5 * (1 - math.cos(math.pi / 4)))
    )
    assert s.lr(12) == 0.0 and s.peak_lr == 0.1
    per_iteration = build_schedules(dataclasses.replace(optim, schedule_unit="iteration"), 3, 256)
    assert per_iteration.lr(4) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 12))) != s.lr(4)
    with pytest.raises(ValueError, match="optim.schedule_unit"):
        build_schedules(dataclasses.replace(optim, schedule_unit="step"), 3, 256)
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        PerEpochSchedule(s.lr, 0)


def test_multistep_schedule_is_simmims_released_step_decay():
    """SimMIM's ViT-B release: warm-up 10 epochs from WARMUP_LR, then the peak, x 0.1 from epoch 700 of 800
    (MultiStepLRScheduler, ``bisect_right``: the milestone iteration itself is already decayed); wd constant."""
    optim = dataclasses.replace(
        OptimConfig(),
        epochs=8,
        warmup_epochs=2,
        base_lr=4e-4,
        scaling_rule="none",
        warmup_start_lr=2e-6,
        schedule="multistep",
        lr_milestones=[4, 6],
        lr_gamma=0.1,
        weight_decay=0.05,
    )
    s = build_schedules(optim, iterations_per_epoch=5, global_batch_size=2048)
    # hand values: warm-up 2e-6 + (4e-4 - 2e-6) * it / 10, then 4e-4 up to iteration 19, 4e-5 from 20, 4e-6 from 30
    assert s.lr(0) == 2e-6 and s.lr(5) == pytest.approx(2.01e-4) and s.lr(10) == 4e-4 and s.lr(19) == 4e-4
    assert s.lr(20) == pytest.approx(4e-5) and s.lr(29) == pytest.approx(4e-5) and s.lr(30) == pytest.approx(4e-6)
    assert s.lr(100) == pytest.approx(4e-6) and s.weight_decay(0) == s.weight_decay(39) == 0.05 and s.peak_lr == 4e-4
    for bad in ((4, 4), (6, 4), (1,)):  # repeated, decreasing, inside the warm-up
        with pytest.raises(ValueError, match="must increase and be >= warmup_iters"):
            MultiStepSchedule(0.0, 1.0, 10, tuple(m * 5 for m in bad), 0.1)


def test_the_releases_first_step_is_dinolites_iteration_1():
    """dinolite's iteration 0 is the warm-up start; MSN's and I-JEPA's schedulers step before the optimizer, so
    their first step takes ``start + (peak - start) / w``, dinolite's iteration 1 (a documented difference:
    docs/faithfulness.md, "What the golden steps show (one step, CPU, fp32)")."""
    optim = dataclasses.replace(
        OptimConfig(), epochs=10, warmup_epochs=2, base_lr=1e-3, scaling_rule="none", warmup_start_lr=2e-4
    )
    s = build_schedules(optim, iterations_per_epoch=4, global_batch_size=256)
    released_first = 2e-4 + (1e-3 - 2e-4) * 1 / 8  # WarmupCosineSchedule.step(): _step = 1, warm-up of 8
    assert s.lr(0) == 2e-4 and s.lr(1) == pytest.approx(released_first) and s.lr(1) - s.lr(0) == pytest.approx(1e-4)
