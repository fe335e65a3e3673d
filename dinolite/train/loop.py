"""The training loop over a :class:`~dinolite.train.run.Run`, with logging, collapse monitoring,
online evaluation, periodic atomic checkpoints, exact resume, NaN stop and preemption.

Per iteration ``i`` (0-based count of optimizer steps already taken):

1. :meth:`Run.next_batch`: reseed torch from ``(train.seed, rank, i)`` (stochastic depth; resume needs no
   saved RNG state), then take batch ``i`` of the data stream (the stream resumes at ``start_batch = i``);
2. :meth:`Run.step`: the generic step of :mod:`dinolite.train.step` (lr / weight decay from the
   schedules, ``loss = objective(batch, i)``, NaN stop, backward, the method's hooks, clipping
   (``optim.clip_grad_scope``), the optimizer (``optim.optimizer``), the check of the weights and gradients);
3. every ``monitor.every``: collapse metrics + watchdog; every ``evaluation.online_every``: the online
   kNN; every ``log_every``: the metric line; every ``checkpoint_every`` and at the end: checkpoint; if
   the stop hook is true on any rank: checkpoint and return ``"preempted"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from dinolite.config import Config
from dinolite.distributed import DistributedEnv, all_reduce_sum
from dinolite.eval.online import OnlineEvaluator
from dinolite.monitor.collapse import CollapseMonitor
from dinolite.monitor.watchdog import CollapseDetected, Watchdog
from dinolite.train.batches import BatchStreamFactory, validate_training_config
from dinolite.train.build import build_run
from dinolite.train.logging import console_logger, log_due
from dinolite.train.methods import MethodSpec
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.run import Run, RunHooks
from dinolite.train.step import StepResult, memory_gb

TRAIN_STATUSES = ("finished", "preempted", "stopped")


@dataclass
class TrainResult:
    """How a call to :func:`train` ended.

    ``status``: ``finished`` (reached the last iteration), ``preempted`` (the stop hook turned true:
    a checkpoint was written, run again to continue) or ``stopped`` (the collapse watchdog stopped it;
    ``message`` says why, the last good checkpoint is kept).
    """

    status: str
    iteration: int
    checkpoint_path: Optional[Path]
    last_metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


def train(
    cfg: Config,
    output_dir: str | Path | None = None,
    env: DistributedEnv | None = None,
    *,
    objective: SSLObjective | None = None,
    batches: BatchStreamFactory | None = None,
    hooks: RunHooks | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``output_dir`` (default ``train.output_dir``), resuming from its ``latest``.

    ``env``, ``objective``, ``batches`` and ``hooks`` (the stop request, the experiment trackers, the
    data workers' init: what :mod:`dinolite.jobs` supplies, as values) go to
    :func:`~dinolite.train.build.build_run`; ``dinolite.jobs.training.train_in_job`` passes the hooks.
    """
    validate_training_config(cfg)
    output_dir = Path(output_dir if output_dir is not None else cfg.train.output_dir)
    with build_run(cfg, env, output_dir, objective=objective, batches=batches, hooks=hooks) as run:
        method: MethodSpec = run.method
        monitor = CollapseMonitor.from_config(
            cfg.monitor,
            output_dir if run.is_main else None,
            method.monitor_student_temp(cfg),
            method.monitor_embeddings,
            method.monitor_means,
        )
        watchdog = Watchdog.from_config(cfg.monitor, console_logger(), method.watchdog_thresholds, monitor.metric_names)
        run.add_state("watchdog", watchdog)  # its patience counters resume with the run
        last_checkpoint = run.resume()
        # None unless evaluation.online_every
        online_eval = OnlineEvaluator.from_config(cfg, output_dir, features=method.eval_features)
        return _Loop(run, monitor, watchdog, online_eval, last_checkpoint).train()


class _Loop:
    """The iterations of one :func:`train` call: what happens around each :meth:`Run.step`."""

    def __init__(
        self,
        run: Run,
        monitor: CollapseMonitor,
        watchdog: Watchdog,
        online_eval: OnlineEvaluator | None,
        last_checkpoint: Path | None,
    ) -> None:
        self.run, self.monitor, self.watchdog, self.online_eval = run, monitor, watchdog, online_eval
        self.last_checkpoint = last_checkpoint
        self.last_metrics: dict[str, float] = {}
        self.window = _Window()

    def train(self) -> TrainResult:
        run, logger = self.run, self.run.logger
        logger.start(run.iteration, run.stop_at)
        logger.info(
            f"training {run.stop_at} iterations (epoch = {run.epoch_length} iterations, global batch "
            f"{run.global_batch}, {run.env.world_size} process(es) on {run.device}, precision "
            f"{run.precision or torch.float32}) -> {run.output_dir}"
        )
        status, message = "finished", ""
        try:
            while run.iteration < run.stop_at:
                if self.iterate():
                    status = "preempted"
                    break
        except CollapseDetected as exc:
            status, message = "stopped", str(exc)
            logger.info(f"collapse watchdog stopped the run: {exc}; last good checkpoint: {self.last_checkpoint}")
        finally:
            logger.close()
        if status == "finished" and self.last_checkpoint is None and run.iteration > 0:
            self.last_checkpoint = run.save()
        return TrainResult(status, run.iteration, self.last_checkpoint, self.last_metrics, message)

    def iterate(self) -> bool:
        """One iteration (the module docstring, points 1-3); True when a stop was requested (checkpointed)."""
        run, logger = self.run, self.run.logger
        t_start = time.perf_counter()
        batch = run.next_batch()
        t_data = time.perf_counter()
        self.window.skipped += int(batch.get("skipped_samples", 0))
        self.window.damaged_shards += int(batch.get("damaged_shards", 0))
        step = run.step(batch)
        self.window.add(step.output, step.grad_norms, t_data - t_start, time.perf_counter() - t_start)
        self.observe(step)
        logger.step(run.iteration)
        if log_due(run.iteration, run.cfg.train.log_every, run.stop_at):
            self.log(step.values)
        if run.stop_requested():
            self.last_checkpoint = run.save()
            logger.info(f"stop requested: checkpoint {self.last_checkpoint} at iteration {run.iteration}")
            return True
        if run.iteration % run.cfg.train.checkpoint_every == 0 or run.iteration == run.stop_at:
            self.last_checkpoint = run.save()
        return False

    def observe(self, step: StepResult) -> None:
        """Collapse metrics and the online kNN when due; the watchdog judges both (may raise CollapseDetected)."""
        run, logger, iteration = self.run, self.run.logger, self.run.iteration
        if self.monitor.due(iteration):
            collapse_metrics = self.monitor.measure(iteration, step.output.diagnostics)
            logger.log_summary(iteration, collapse_metrics, "collapse")
            logger.log_histograms(iteration, self.monitor.last_spectra)
            self.watchdog.check(iteration, collapse_metrics)
        if self.online_eval is not None and self.online_eval.due(iteration):
            evaluated = run.objective.evaluated_backbone(run.method.eval_network)  # the method's evaluated network
            eval_metrics = self.online_eval.evaluate(evaluated, run.device)
            logger.log_summary(iteration, eval_metrics, "eval")
            self.watchdog.check(iteration, eval_metrics)  # e.g. eval/knn_top1 thresholds

    def log(self, values: Mapping[str, float]) -> None:
        """The metric line of the iterations since the last one."""
        run = self.run
        metrics = self.window.summary(values, run.global_batch, run.device, run.iteration, run.epoch_length)
        if run.scaler.enabled:  # fp16: the current loss scale and how many steps overflowed so far
            metrics.update(loss_scale=run.scaler.scale, skipped_steps=float(run.scaler.skipped_steps))
        eta = self.window.seconds_per_iteration() * (run.stop_at - run.iteration)
        run.logger.log(run.iteration, metrics, run.stop_at, eta)
        self.last_metrics = metrics
        self.window = _Window()


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
