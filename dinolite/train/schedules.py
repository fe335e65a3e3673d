"""Per-iteration hyper-parameter schedules: the generic lr and weight decay, and the schedule shapes.

Every schedule is a pure function of the iteration (no state), so a resumed run gets exactly the
values of an uninterrupted one. The shape follows DINOv2's ``CosineScheduler`` (Oquab et al. 2023;
cosine decay from Loshchilov & Hutter 2017, "SGDR", with linear warmup as in Goyal et al. 2017).

**What an "epoch" is here.** As in DINOv2 (``OFFICIAL_EPOCH_LENGTH``), an epoch is a fixed number of
iterations, ``train.iterations_per_epoch`` (1250 by default), NOT a pass over the data set: schedules
are laid out over ``optim.epochs * train.iterations_per_epoch`` iterations whatever the data set size,
and one "epoch" sees ``iterations_per_epoch * global_batch_size`` images.

Method-specific schedules (DINO's teacher momentum and temperature, its prototype freeze) are built by
the method from these shapes (e.g. :class:`dinolite.train.methods.dinov2_objective.DINOv2Schedules`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Protocol

from dinolite.config import ConfigError, OptimConfig


class Schedule(Protocol):
    """A value as a function of the (0-based) training iteration."""

    def __call__(self, iteration: int) -> float: ...


@dataclass(frozen=True)
class CosineSchedule:
    """Freeze, then linear warmup, then half-cosine decay, then hold.

    With ``f = freeze_iters``, ``w = warmup_iters``, ``n = total_iters - f - w``::

        it < f                 -> 0
        f <= it < f + w        -> start_warmup_value + (base_value - start_warmup_value) * (it - f) / w
        f + w <= it < total    -> final + 0.5 * (base - final) * (1 + cos(pi * (it - f - w) / n))
        it >= total_iters      -> final_value

    The warmup reaches ``base_value`` at ``it = f + w`` (the first cosine step) and the cosine reaches
    ``final_value`` at ``total_iters``, so the curve is continuous. DINOv2 instead uses
    ``linspace(start, base, w)`` (``base`` already at ``it = f + w - 1``) and its cosine stops one step
    short of ``final``; values differ by at most one step's increment.
    """

    base_value: float
    final_value: float
    total_iters: int
    warmup_iters: int = 0
    start_warmup_value: float = 0.0
    freeze_iters: int = 0

    def __post_init__(self) -> None:
        if min(self.total_iters, self.warmup_iters, self.freeze_iters) < 0:
            raise ValueError(f"CosineSchedule: iteration counts must be >= 0, got {self}")
        if self.freeze_iters + self.warmup_iters > self.total_iters:
            raise ValueError(
                f"CosineSchedule: freeze_iters ({self.freeze_iters}) + warmup_iters ({self.warmup_iters}) "
                f"exceed total_iters ({self.total_iters})"
            )

    def __call__(self, iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"CosineSchedule: iteration must be >= 0, got {iteration}")
        if iteration >= self.total_iters:
            return float(self.final_value)
        if iteration < self.freeze_iters:
            return 0.0
        step = iteration - self.freeze_iters
        if step < self.warmup_iters:
            return self.start_warmup_value + (self.base_value - self.start_warmup_value) * step / self.warmup_iters
        step -= self.warmup_iters
        n_cosine = self.total_iters - self.freeze_iters - self.warmup_iters
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / n_cosine))  # 1 -> 0
        return self.final_value + (self.base_value - self.final_value) * cosine


@dataclass(frozen=True)
class LinearSchedule:
    """A straight ramp: ``base + (final - base) * it / total_iters`` for ``it < total_iters``, then ``final``
    (I-JEPA's released EMA momentum schedule). ``total_iters`` may be fractional: a ramp laid out over
    ``horizon`` x a run (:func:`stretched_iters`) stops wherever the run ends (MSN's released momentum and
    sharpening ramps, 1.25 x the run)."""

    base_value: float
    final_value: float
    total_iters: float

    def __post_init__(self) -> None:
        if self.total_iters < 0:
            raise ValueError(f"LinearSchedule: total_iters must be >= 0, got {self.total_iters}")

    def __call__(self, iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"LinearSchedule: iteration must be >= 0, got {iteration}")
        if iteration >= self.total_iters:
            return float(self.final_value)
        return self.base_value + (self.final_value - self.base_value) * iteration / self.total_iters


def stretched_iters(run_iters: int, horizon: float) -> float:
    """The length of a schedule laid out over ``horizon`` x a run of ``run_iters`` iterations (``horizon`` > 0;
    1: the run itself). The product is kept fractional, as MSN's release divides by ``ipe * epochs * 1.25``."""
    if run_iters < 0 or not horizon > 0:
        raise ValueError(f"stretched_iters: run_iters must be >= 0 and horizon > 0, got {run_iters}, {horizon}")
    return run_iters * horizon


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warmup ``start -> peak``, a half-cosine ``peak -> end``, then ``end`` held: the shape of DINOv3's
    ``linear_warmup_cosine_decay`` (Siméoni et al. 2025; its "schedules v2"), value for value.

    With ``w = warmup_iters`` and ``c = cosine_iters`` (``None``: ``total_iters - w``)::

        it < w             -> start + (peak - start) * it / w
        w <= it < w + c    -> end + (peak - end) * (1 + cos(pi * (it - w) / (c - 1))) / 2      (c = 1: peak)
        it >= w + c        -> end

    Unlike :class:`CosineSchedule` the cosine reaches ``end`` at its last step (``it = w + c - 1``), as the
    release's ``linspace(0, pi, c)`` does. ``peak == end`` is DINOv3's constant schedule: a warmup, then the
    value held for the rest of the run (its lr, weight decay and teacher momentum).
    """

    start: float
    peak: float
    end: float
    warmup_iters: int
    total_iters: int
    cosine_iters: int | None = None

    def __post_init__(self) -> None:
        cosine = self.total_iters - self.warmup_iters if self.cosine_iters is None else self.cosine_iters
        if min(self.warmup_iters, self.total_iters, cosine) < 0 or self.warmup_iters + cosine > self.total_iters:
            raise ValueError(
                f"WarmupCosineSchedule: warmup_iters ({self.warmup_iters}) + cosine_iters ({cosine}) must lie "
                f"in [0, total_iters ({self.total_iters})], each >= 0"
            )

    def __call__(self, iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"WarmupCosineSchedule: iteration must be >= 0, got {iteration}")
        w = self.warmup_iters
        c = self.total_iters - w if self.cosine_iters is None else self.cosine_iters
        if iteration < w:
            return self.start + (self.peak - self.start) * iteration / w
        step = iteration - w
        if step >= c:
            return float(self.end)
        cosine = 1.0 if c == 1 else 0.5 * (1.0 + math.cos(math.pi * step / (c - 1)))
        return self.end + (self.peak - self.end) * cosine


def constant_after_warmup(value: float, warmup_iters: int, total_iters: int, start: float = 0.0) -> Schedule:
    """``start -> value`` linearly over ``warmup_iters``, then ``value`` (DINOv3's constant schedules)."""
    return WarmupCosineSchedule(start, value, value, warmup_iters, total_iters)


@dataclass(frozen=True)
class MultiStepSchedule:
    """Linear warm-up ``start -> peak`` over ``warmup_iters``, then ``peak x gamma^k`` where ``k`` counts the
    ``milestones`` (iterations, increasing, each >= ``warmup_iters``) at or before the iteration: SimMIM's
    released ``MultiStepLRScheduler`` (``lr_scheduler.py:119-140``: ``bisect_right(milestones, t)``)."""

    start: float
    peak: float
    warmup_iters: int
    milestones: tuple[int, ...]
    gamma: float

    def __post_init__(self) -> None:
        increasing = list(self.milestones) == sorted(set(self.milestones))
        if self.warmup_iters < 0 or not increasing or any(m < self.warmup_iters for m in self.milestones):
            raise ValueError(
                f"MultiStepSchedule: milestones {list(self.milestones)} must increase and be >= warmup_iters "
                f"({self.warmup_iters} >= 0)"
            )

    def __call__(self, iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"MultiStepSchedule: iteration must be >= 0, got {iteration}")
        if iteration < self.warmup_iters:
            return self.start + (self.peak - self.start) * iteration / self.warmup_iters
        return self.peak * self.gamma ** bisect.bisect_right(self.milestones, iteration)


@dataclass(frozen=True)
class PerEpochSchedule:
    """``inner`` held for each epoch at its value on the epoch's first iteration: ``inner(e * ipe)`` for every
    iteration of epoch ``e = it // ipe`` (``optim.schedule_unit: epoch``). SimSiam's release sets its cosine lr
    once per epoch (``init_lr * 0.5 * (1 + cos(pi * epoch / epochs))``, ``main_simsiam.py:254-257, 359-366``),
    which is this wrapper around a cosine over ``epochs * ipe`` iterations, value for value."""

    inner: Schedule
    iterations_per_epoch: int

    def __post_init__(self) -> None:
        if self.iterations_per_epoch <= 0:
            raise ValueError(f"PerEpochSchedule: iterations_per_epoch must be > 0, got {self.iterations_per_epoch}")

    def __call__(self, iteration: int) -> float:
        if iteration < 0:
            raise ValueError(f"PerEpochSchedule: iteration must be >= 0, got {iteration}")
        return self.inner(iteration - iteration % self.iterations_per_epoch)


@dataclass(frozen=True)
class TrainingSchedules:
    """The generic schedules the trainer applies to the optimizer every iteration; ``peak_lr`` is the lr of
    the groups kept at the peak (``optim.fixed_lr_modules``, SimSiam's predictor)."""

    lr: Schedule
    weight_decay: Schedule
    peak_lr: float | None = None

    def at(self, iteration: int) -> dict[str, float]:
        """All values at ``iteration`` (for the optimiser and the logs)."""
        return {"lr": self.lr(iteration), "weight_decay": self.weight_decay(iteration)}


def scaled_lr(base_lr: float, scaling_rule: str, global_batch_size: int) -> float:
    """Peak lr for a global batch: ``sqrt_wrt_1024``: base * sqrt(B/1024) (DINOv2's rule),
    ``linear_wrt_1024``: base * B/1024 (Goyal et al. 2017), ``none``: base."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
    if scaling_rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(global_batch_size / 1024.0)
    if scaling_rule == "linear_wrt_1024":
        return base_lr * global_batch_size / 1024.0
    if scaling_rule == "none":
        return base_lr
    raise ValueError(
        f"invalid value for 'optim.scaling_rule': {scaling_rule!r}; "
        "expected one of sqrt_wrt_1024, linear_wrt_1024, none"
    )


def build_schedules(optim_cfg: OptimConfig, iterations_per_epoch: int, global_batch_size: int) -> TrainingSchedules:
    """The generic schedules, stepped every iteration or, with ``optim.schedule_unit: epoch``, held over each
    epoch at the value of its first iteration (:class:`PerEpochSchedule`: SimSiam's release; warm-up included).

    lr and weight decay of DINOv2's recipe from the ``optim`` config section.

    * lr: linear warmup from ``warmup_start_lr`` (0 by default; I-JEPA and MSN start at 2e-4) over
      ``warmup_epochs`` to the scaled ``base_lr``, cosine to ``min_lr`` at ``epochs`` (neither ``min_lr`` nor
      ``warmup_start_lr`` is scaled, as in DINOv2 and the releases).
    * weight decay: cosine ``weight_decay`` -> ``weight_decay_end`` (no warmup).

    ``schedule_horizon`` (1 by default) lays both cosines out over that many times the run, which still stops
    at ``epochs``: MSN's release (1.25) ends its run before the lr reaches ``min_lr`` and the weight decay
    ``weight_decay_end``; I-JEPA's ``ipe_scale`` is the same factor (1.0 in its configs). (MSN's own lr cosine
    starts after the warm-up and lasts 1.25 x the run, so it ends ``warmup_epochs`` later than this one.)

    ``optim_cfg`` is a ``dinolite.config.OptimConfig`` (or any object with the same attributes).

    With ``optim.schedule: multistep`` (SimMIM's release): the same lr warm-up, then the peak multiplied by
    ``optim.lr_gamma`` at each epoch of ``optim.lr_milestones`` (:class:`MultiStepSchedule`), ``weight_decay``
    throughout.

    With ``optim.schedule: constant`` (DINOv3's recipe): the same lr warmup (from ``warmup_start_lr``), then the scaled ``base_lr`` held
    to the end (``min_lr`` unused), and ``weight_decay`` throughout (``weight_decay_end`` unused).
    """
    if iterations_per_epoch <= 0:
        raise ValueError(f"invalid value for 'train.iterations_per_epoch': {iterations_per_epoch}; must be > 0")
    schedules = _per_iteration_schedules(optim_cfg, iterations_per_epoch, global_batch_size)
    unit = getattr(optim_cfg, "schedule_unit", "iteration")
    if unit == "iteration":
        return schedules
    if unit != "epoch":
        raise ValueError(f"invalid value for 'optim.schedule_unit': {unit!r}; expected one of iteration, epoch")
    return TrainingSchedules(
        lr=PerEpochSchedule(schedules.lr, iterations_per_epoch),
        weight_decay=PerEpochSchedule(schedules.weight_decay, iterations_per_epoch),
        peak_lr=schedules.peak_lr,
    )


def _per_iteration_schedules(
    optim_cfg: OptimConfig, iterations_per_epoch: int, global_batch_size: int
) -> TrainingSchedules:
    total = round(optim_cfg.epochs * iterations_per_epoch * getattr(optim_cfg, "schedule_horizon", 1.0))
    peak_lr = scaled_lr(optim_cfg.base_lr, optim_cfg.scaling_rule, global_batch_size)
    shape = getattr(optim_cfg, "schedule", "cosine")
    warmup = optim_cfg.warmup_epochs * iterations_per_epoch
    start = getattr(optim_cfg, "warmup_start_lr", 0.0)
    if shape == "constant":
        return TrainingSchedules(
            lr=constant_after_warmup(peak_lr, warmup, total, start=start),
            weight_decay=constant_after_warmup(optim_cfg.weight_decay, 0, total),
            peak_lr=peak_lr,
        )
    if shape == "multistep":  # SimMIM's release: milestones in epochs, weight decay constant
        milestones = tuple(int(m) * iterations_per_epoch for m in getattr(optim_cfg, "lr_milestones", []))
        return TrainingSchedules(
            lr=MultiStepSchedule(start, peak_lr, warmup, milestones, getattr(optim_cfg, "lr_gamma", 0.1)),
            weight_decay=constant_after_warmup(optim_cfg.weight_decay, 0, total),
            peak_lr=peak_lr,
        )
    if shape != "cosine":
        raise ValueError(f"invalid value for 'optim.schedule': {shape!r}; expected one of cosine, constant, multistep")
    if optim_cfg.min_lr > peak_lr:
        raise ConfigError(
            f"invalid value for 'optim.min_lr': {optim_cfg.min_lr}; must be <= the peak lr {peak_lr:.4g} "
            f"(optim.base_lr={optim_cfg.base_lr} scaled by {optim_cfg.scaling_rule} for a global batch of "
            f"{global_batch_size})"
        )
    lr = CosineSchedule(
        base_value=peak_lr,
        final_value=optim_cfg.min_lr,
        total_iters=total,
        warmup_iters=optim_cfg.warmup_epochs * iterations_per_epoch,
        start_warmup_value=getattr(optim_cfg, "warmup_start_lr", 0.0),
    )
    return TrainingSchedules(
        lr=lr,
        weight_decay=CosineSchedule(optim_cfg.weight_decay, optim_cfg.weight_decay_end, total),
        peak_lr=peak_lr,
    )
