"""The training loop: one optimizer step per batch of any :class:`SSLObjective`, with logging,
collapse monitoring, periodic atomic checkpoints, exact resume, NaN stop and preemption.

Per iteration ``i`` (0-based count of optimizer steps already taken):

1. reseed torch from ``(train.seed, rank, i)`` (stochastic depth; resume needs no saved RNG state);
2. take batch ``i`` of the data stream (the stream resumes at ``start_batch = i``);
3. :func:`run_training_step`: lr / weight decay from the generic schedules, ``loss = objective(batch, i)``;
   stop with :class:`NonFiniteLossError` (no checkpoint written) if the loss is NaN/inf on any rank;
   backward; ``objective.after_backward(i, optimizer)`` (e.g. DINO's prototype freeze); clip each
   student module's gradient norm (global across shards); AdamW step (with fp16, the loss is scaled and a
   step whose gradients overflowed is skipped: :mod:`dinolite.train.loss_scaling`); stop with
   :class:`~dinolite.train.finite_check.NonFiniteStateError` if a weight/gradient became NaN/inf;
   ``objective.after_optimizer_step(i)`` (e.g. the EMA teacher update);
4. every ``monitor.every``: collapse metrics + watchdog; every ``log_every``: the metric line;
   every ``checkpoint_every`` and at the end: checkpoint; if ``stop_requested()`` on any rank:
   checkpoint and return ``"preempted"``.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from dinolite.checkpoint import CheckpointManager
from dinolite.config import Config, save_config
from dinolite.distributed import (
    DistributedEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    init_distributed,
)
from dinolite.eval.online import OnlineEvaluator
from dinolite.fsdp.sharding import clip_grad_norm_, shard_objective
from dinolite.monitor.collapse import CollapseMonitor
from dinolite.monitor.watchdog import CollapseDetected, Watchdog
from dinolite.train import builders
from dinolite.train.finite_check import check_finite_parameters
from dinolite.train.logging import MetricLogger, MetricSink, console_logger, log_due
from dinolite.train.loss_scaling import LossScaler
from dinolite.train.methods import MethodSpec, get_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.optim import apply_schedules, build_optimizer, get_param_groups
from dinolite.train.resume_checks import report_config_changes
from dinolite.train.schedules import TrainingSchedules, build_schedules

TRAIN_STATUSES = ("finished", "preempted", "stopped")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the iteration and every loss term's value."""


@dataclass
class TrainResult:
    """How a call to :func:`train` ended.

    ``status``: ``finished`` (reached the last iteration), ``preempted`` (``stop_requested`` turned true:
    a checkpoint was written, run again to continue) or ``stopped`` (the collapse watchdog stopped it;
    ``message`` says why, the last good checkpoint is kept).
    """

    status: str
    iteration: int
    checkpoint_path: Optional[Path]
    last_metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


class TrainProgress:
    """The loop's counter as a checkpoint Stateful: optimizer steps taken (= batches consumed).

    Schedules are pure functions of it, so restoring it restores lr, weight decay, momentum and teacher
    temperature exactly.
    """

    def __init__(self, iteration: int = 0) -> None:
        self.iteration = iteration

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])


def seed_step(seed: int, rank: int, iteration: int) -> None:
    """Seed torch (CPU and CUDA) for one step, so a resumed run draws the same random numbers."""
    torch.manual_seed((seed * 1_000_003 + rank) * 1_000_003 + iteration)


def check_finite(output: ObjectiveOutput, iteration: int, device: torch.device) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when the loss is NaN/inf on any rank."""
    local_bad = not bool(torch.isfinite(output.loss.detach()).item())
    if any_rank(local_bad, device):
        values = ", ".join(f"{name}={float(v.detach()):.6g}" for name, v in output.terms.items())
        where = "on this rank" if local_bad else "on another rank"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration} ({where}): loss={float(output.loss.detach()):.6g}, {values}; "
            "stopping without writing a checkpoint (the last good one is kept). Try a lower optim.base_lr, "
            "optim.clip_grad > 0 or train.compute_precision=fp32"
        )


def clip_gradients(modules: Mapping[str, nn.Module], max_norm: float) -> dict[str, float]:
    """Clip each student module's gradient to ``max_norm`` separately, as DINOv2 does (backbone, heads).

    The norm is global across FSDP shards (:func:`dinolite.fsdp.sharding.clip_grad_norm_`). Returns
    the pre-clipping norms for the log; ``max_norm <= 0`` (``optim.clip_grad=0``) disables clipping.
    """

    norms: dict[str, float] = {}
    if max_norm <= 0:
        return norms
    for name, module in modules.items():
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            norms[f"grad_norm/{name}"] = float(clip_grad_norm_(params, max_norm))
    return norms


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, process max RSS on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class StepResult:
    """One optimizer step: the objective's output, the pre-clipping gradient norms, the schedule values."""

    output: ObjectiveOutput
    grad_norms: dict[str, float]
    values: dict[str, float]


def run_training_step(
    objective: SSLObjective,
    optimizer: torch.optim.Optimizer,
    schedules: TrainingSchedules,
    batch: Mapping[str, Any],
    iteration: int,
    clip_grad: float,
    precision: torch.dtype | None = None,
    device: torch.device = torch.device("cpu"),
    scaler: LossScaler | None = None,
) -> StepResult:
    """The generic step every method runs (the module docstring, point 3). With an fp16 ``scaler`` the
    loss is scaled for backward, the gradients unscaled before clipping, and a step whose gradients
    overflowed is skipped (its gradients dropped) while the scale backs off."""
    values = schedules.at(iteration)
    apply_schedules(optimizer, values["lr"], values["weight_decay"])
    optimizer.zero_grad(set_to_none=True)
    with builders.autocast_context(precision, device):
        output = objective(batch, iteration)
    check_finite(output, iteration, device)
    scaler = scaler or LossScaler(enabled=False)
    scaler.scale_loss(output.loss).backward()
    scaler.unscale_(p for module in objective.trainable_modules().values() for p in module.parameters())
    objective.after_backward(iteration, optimizer)
    grad_norms = clip_gradients(objective.trainable_modules(), clip_grad)
    if scaler.update(grad_norms):  # False: an fp16 overflow, seen alike by every rank (global norms)
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)  # the overflowed gradients are dropped, not checked
    check_finite_parameters(objective.trainable_modules(), iteration, device)  # before any checkpoint of them
    objective.after_optimizer_step(iteration)
    values.update(objective.schedule_values(iteration))
    return StepResult(output, grad_norms, values)


def _metric_sinks(
    cfg: Config,
    output_dir: Path,
    is_main: bool,
    make: Callable[[Config, Path], Sequence[MetricSink]] | None,
    console: logging.Logger,
) -> Sequence[MetricSink]:
    """The trackers of ``train.loggers`` on the main process (none elsewhere: only it writes records)."""
    if not is_main:
        return ()
    if make is None:
        if cfg.train.loggers:
            console.warning(
                f"train.loggers={list(cfg.train.loggers)} is ignored: train() was called without "
                "make_metric_sinks (dinolite.jobs.training.train_in_job passes the trackers)"
            )
        return ()
    return make(cfg, output_dir)


def train(
    cfg: Config,
    output_dir: str | Path | None = None,
    env: DistributedEnv | None = None,
    stop_requested: Callable[[], bool] | None = None,
    objective: SSLObjective | None = None,
    *,
    make_metric_sinks: Callable[[Config, Path], Sequence[MetricSink]] | None = None,
    data_worker_init: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``output_dir`` (default ``train.output_dir``), resuming from its ``latest``.

    What runs around a training run (signals, trackers; :mod:`dinolite.jobs`) comes in as values, so
    that this layer never imports the one above it (``dinolite.jobs.training.train_in_job`` passes them).

    Args:
        env: the distributed environment (default: :func:`init_distributed` from the config).
        stop_requested: polled every iteration (e.g. a Slurm signal flag); true on any rank ->
            checkpoint and return ``"preempted"``.
        objective: an already built objective (tests); default ``train.method``'s from ``cfg``.
        make_metric_sinks: builds the experiment trackers of ``train.loggers`` (called on the main
            process, with ``output_dir``, once the run is resumed); without it ``train.loggers`` is
            ignored with a warning.
        data_worker_init: the data loader's ``worker_init_fn`` (e.g. ignore the stop signals).
    """

    method: MethodSpec = get_method(cfg.train.method)
    builders.validate_training_config(cfg)
    output_dir = Path(output_dir if output_dir is not None else cfg.train.output_dir)
    env = env or init_distributed(cfg.distributed.backend, cfg.train.device)
    device = torch.device(env.device) if env.device else torch.device("cpu")
    is_main = env.rank == 0
    console = console_logger()
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- model, optimizer, schedules
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    objective = objective if objective is not None else method.build_objective(cfg)
    objective.to(device)
    if env.world_size > 1 or cfg.distributed.compile or cfg.distributed.activation_checkpointing:
        shard_objective(
            objective,
            strategy=cfg.distributed.sharding_strategy,
            mixed_precision=builders.autocast_dtype(cfg.train.compute_precision, device),
            activation_checkpointing=cfg.distributed.activation_checkpointing,
            compile=cfg.distributed.compile,
        )
    objective.train()
    groups = get_param_groups(objective.student, cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult)
    optimizer = build_optimizer(groups, cfg.optim.adamw_beta1, cfg.optim.adamw_beta2)
    epoch_length = cfg.train.iterations_per_epoch
    global_batch = cfg.train.batch_size_per_gpu * env.world_size
    schedules: TrainingSchedules = build_schedules(cfg.optim, epoch_length, global_batch)
    total_iterations = cfg.optim.epochs * epoch_length
    stop_at = min(total_iterations, cfg.train.max_iterations or total_iterations)
    precision = builders.autocast_dtype(cfg.train.compute_precision, device)

    monitor = CollapseMonitor.from_config(
        cfg.monitor,
        output_dir if is_main else None,
        method.monitor_student_temp(cfg),
        method.monitor_embeddings,
        method.monitor_means,
    )
    watchdog = Watchdog.from_config(cfg.monitor, console, method.watchdog_thresholds, monitor.metric_names)
    progress = TrainProgress()
    # What a checkpoint holds (CheckpointManager's app_state): the objective (student, teacher, centering
    # buffers via extra_state), AdamW moments, the loop's progress and the watchdog's patience counters;
    # the manager adds per-rank RNG states and the data position (= iteration: one batch per step).
    app_state = {"model": objective, "optimizer": optimizer, "progress": progress, "watchdog": watchdog}
    scaler = LossScaler(enabled=precision == torch.float16 and cfg.train.grad_scaler)
    if scaler.enabled:  # fp16: the loss scale is part of what an exact resume restores
        app_state["grad_scaler"] = scaler

    # ---------------------------------------------------------------- resume
    # The method record (evaluated network, head names) lets eval/export read the run without the registry.
    checkpoints = CheckpointManager(
        output_dir, keep_last=cfg.train.keep_last_checkpoints, config=cfg, method=method.record(cfg)
    )
    if is_main:
        report_config_changes(checkpoints.latest(), cfg, console.info)
    resumed = checkpoints.load_latest_intact(app_state, warn=console.warning if is_main else lambda _: None)
    last_checkpoint = resumed[0] if resumed is not None else None
    if resumed is not None:
        info = resumed[1]
        if info["batches_consumed"] != progress.iteration:
            raise RuntimeError(
                f"{last_checkpoint}: batches_consumed={info['batches_consumed']} differs from "
                f"iteration={progress.iteration}, but this loop takes exactly one batch per step"
            )
        if is_main:
            console.info(f"resumed from {last_checkpoint} at iteration {progress.iteration}")
    if is_main:  # after the resume checks: a refused resume leaves the run's config.yaml as it was
        save_config(cfg, output_dir / "config.yaml")

    def save_checkpoint() -> Path:
        return checkpoints.save(progress.iteration, app_state, batches_consumed=progress.iteration)

    source = builders.resolve_train_source(cfg, output_dir, is_main, lambda: barrier(device))
    stream = builders.build_data_stream(
        cfg,
        source,
        env.rank,
        env.world_size,
        start_batch=progress.iteration,
        transform=method.build_transform(cfg),
        collate_fn=method.build_collate(cfg),
        # passed only when given: tests replace build_data_stream with streams of the older signature
        **({"worker_init_fn": data_worker_init} if data_worker_init is not None else {}),
    )

    logger = MetricLogger.from_config(
        cfg,
        output_dir,
        enabled=is_main,
        resume_iteration=progress.iteration,
        trackers=_metric_sinks(cfg, output_dir, is_main, make_metric_sinks, console),
    )
    # None unless evaluation.online_every
    online_eval = OnlineEvaluator.from_config(cfg, output_dir, features=method.eval_features)
    logger.start(progress.iteration, stop_at)
    logger.info(
        f"training {stop_at} iterations (epoch = {epoch_length} iterations, global batch {global_batch}, "
        f"{env.world_size} process(es) on {device}, precision {precision or torch.float32}) -> {output_dir}"
    )
    window = _Window()
    last_metrics: dict[str, float] = {}
    status, message = "finished", ""
    try:
        while progress.iteration < stop_at:
            it = progress.iteration
            seed_step(cfg.train.seed, env.rank, it)
            t_start = time.perf_counter()
            batch = next(stream)
            t_data = time.perf_counter()
            window.skipped += int(batch.get("skipped_samples", 0))
            window.damaged_shards += int(batch.get("damaged_shards", 0))
            batch = to_device(batch, device)

            step = run_training_step(
                objective, optimizer, schedules, batch, it, cfg.optim.clip_grad, precision, device, scaler
            )
            output, values = step.output, step.values
            progress.iteration = it + 1
            window.add(output, step.grad_norms, t_data - t_start, time.perf_counter() - t_start)

            if monitor.due(progress.iteration):
                collapse_metrics = monitor.measure(progress.iteration, output.diagnostics)
                logger.log_summary(progress.iteration, collapse_metrics, "collapse")
                logger.log_histograms(progress.iteration, monitor.last_spectra)
                watchdog.check(progress.iteration, collapse_metrics)  # may raise CollapseDetected
            if online_eval is not None and online_eval.due(progress.iteration):
                evaluated = getattr(objective, method.eval_network)["backbone"]  # the method's evaluated network
                eval_metrics = online_eval.evaluate(evaluated, device)
                logger.log_summary(progress.iteration, eval_metrics, "eval")
                watchdog.check(progress.iteration, eval_metrics)  # e.g. eval/knn_top1 thresholds
            logger.step(progress.iteration)
            if log_due(progress.iteration, cfg.train.log_every, stop_at):
                last_metrics = window.summary(values, global_batch, device, progress.iteration, epoch_length)
                if scaler.enabled:  # fp16: the current loss scale and how many steps overflowed so far
                    last_metrics.update(loss_scale=scaler.scale, skipped_steps=float(scaler.skipped_steps))
                eta = window.seconds_per_iteration() * (stop_at - progress.iteration)
                logger.log(progress.iteration, last_metrics, stop_at, eta)
                window = _Window()
            if stop_requested is not None and any_rank(bool(stop_requested()), device):
                last_checkpoint = save_checkpoint()
                status = "preempted"
                logger.info(f"stop requested: checkpoint {last_checkpoint} at iteration {progress.iteration}")
                break
            if progress.iteration % cfg.train.checkpoint_every == 0 or progress.iteration == stop_at:
                last_checkpoint = save_checkpoint()
    except CollapseDetected as exc:
        status, message = "stopped", str(exc)
        logger.info(f"collapse watchdog stopped the run: {exc}; last good checkpoint: {last_checkpoint}")
    finally:
        logger.close()
    if status == "finished" and last_checkpoint is None and progress.iteration > 0:
        last_checkpoint = save_checkpoint()
    return TrainResult(status, progress.iteration, last_checkpoint, last_metrics, message)


class _Window:
    """Sums over the iterations since the last log line (losses, timings, skipped samples, damaged shards)."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, float] = {}
        self.data_time = 0.0
        self.step_time = 0.0
        self.skipped = 0
        self.damaged_shards = 0

    def add(self, output: ObjectiveOutput, grad_norms: Mapping[str, float], data_time: float, step_time: float) -> None:
        self.n += 1
        self.data_time += data_time
        self.step_time += step_time
        values = {"loss": float(output.loss.detach()), **{k: float(v.detach()) for k, v in output.terms.items()}}
        for key, value in {**values, **grad_norms}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def seconds_per_iteration(self) -> float:
        return self.step_time / max(self.n, 1)

    def summary(
        self, values: Mapping[str, float], global_batch: int, device: torch.device, iteration: int, epoch_length: int
    ) -> dict[str, float]:
        """Mean losses over the window (averaged over ranks), schedule values, throughput, memory."""
        n = max(self.n, 1)
        world = all_reduce_sum(1.0, device)
        metrics = {k: all_reduce_sum(v / n, device) / world for k, v in self.sums.items()}
        metrics.update({k: v for k, v in values.items() if k not in ("lr", "weight_decay")})
        metrics.update(
            lr=values["lr"],
            wd=values["weight_decay"],
            images_per_s=global_batch * self.n / max(self.step_time, 1e-9),
            data_wait=self.data_time / max(self.step_time, 1e-9),
            memory_gb=memory_gb(device),
            images_seen=float(iteration * global_batch),
            skipped_samples=all_reduce_sum(float(self.skipped), device),
            damaged_shards=all_reduce_sum(float(self.damaged_shards), device),
            epoch=iteration / epoch_length,
        )
        return metrics
