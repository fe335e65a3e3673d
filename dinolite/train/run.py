"""A training run: everything one needs, built from a config and the process environment.

::

    with build_run(cfg, output_dir=out) as run:
        run.resume()                               # the latest intact checkpoint of ``out``, if any
        while run.iteration < run.stop_at:
            result = run.step(run.next_batch())    # one optimizer step; result.output.loss, ...
        run.save()

:func:`dinolite.train.build.build_run` builds a :class:`Run` (its module says what, in which order); nothing
is read from or written to disk yet. :meth:`Run.resume` then loads the latest intact checkpoint, writes
``config.yaml``, opens the data stream at the resumed iteration and the metric log (TensorBoard,
``metrics.jsonl``, trackers).

A Run without ``output_dir`` (benchmarks, tests) saves and logs nothing; it can step on batches given
to :meth:`Run.step` directly, or draw them from ``batches`` (a :data:`~dinolite.train.batches.BatchStreamFactory`)
or the config's ``data.source`` through :meth:`Run.next_batch`. :func:`dinolite.train.loop.train` is the
loop over a Run: monitoring, online evaluation, log lines, stop requests, periodic checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from dinolite.checkpoint import CheckpointManager
from dinolite.config import Config, ConfigError, save_config
from dinolite.data.builtin_sets import builtin_set
from dinolite.distributed import DistributedEnv, any_rank, barrier
from dinolite.fsdp.sharding import ShardingPlan
from dinolite.train.batches import (
    BatchStreamFactory,
    StreamRequest,
    build_data_stream,
    check_data_source,
    resolve_train_source,
)
from dinolite.train.logging import MetricLogger, MetricSink, console_logger
from dinolite.train.loss_scaling import LossScaler
from dinolite.train.methods import MethodSpec
from dinolite.train.objective import SSLObjective
from dinolite.train.resume_checks import report_config_changes
from dinolite.train.step import StepResult, TrainingStep, seed_step, to_device


class TrainProgress:
    """The run's counter as a checkpoint Stateful: optimizer steps taken (= batches consumed).

    Schedules are pure functions of it, so restoring it restores lr, weight decay, momentum and teacher
    temperature exactly.
    """

    def __init__(self, iteration: int = 0) -> None:
        self.iteration = iteration

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])


@dataclass(frozen=True)
class RunHooks:
    """What runs around a training run, handed in as values (:mod:`dinolite.jobs` provides them, so that
    ``train`` never imports the layer above it; ``dinolite.jobs.training.train_in_job`` passes all three).

    ``stop_requested``: polled once per iteration by :meth:`Run.stop_requested` (e.g. a signal flag).
    ``metric_sinks``: builds the experiment trackers of ``train.loggers`` (called on the main process,
    with the output directory, when the metric log opens); without it ``train.loggers`` is ignored with
    a warning. ``data_worker_init``: the data loader's ``worker_init_fn`` (e.g. ignore the stop signals).
    """

    stop_requested: Callable[[], bool] | None = None
    metric_sinks: Callable[[Config, Path], Sequence[MetricSink]] | None = None
    data_worker_init: Callable[[int], None] | None = None


def _ignore(_: str) -> None:
    """A warning sink for the ranks that do not print."""


@dataclass(eq=False)
class Run:
    """A built training run (see the module docstring); made by :func:`~dinolite.train.build.build_run`.

    ``app_state`` is what a checkpoint holds: the objective (student, teacher, centering buffers via
    extra_state), the optimizer's state (AdamW's moments, SGD's or LARS's momentum), the progress, the fp16
    loss scale, and whatever the loop adds with :meth:`add_state` before :meth:`resume` (the watchdog's
    patience counters); the checkpoint manager adds per-rank RNG states and the data position (= iteration:
    one batch per step).
    """

    cfg: Config
    env: DistributedEnv
    method: MethodSpec
    training_step: TrainingStep
    output_dir: Path | None = None
    checkpoints: CheckpointManager | None = None
    sharding: ShardingPlan | None = None
    batches: BatchStreamFactory | None = None
    hooks: RunHooks = field(default_factory=RunHooks)
    progress: TrainProgress = field(default_factory=TrainProgress)
    app_state: dict[str, Any] = field(default_factory=dict)
    _stream: Iterator[dict[str, Any]] | None = field(default=None, init=False, repr=False)
    _logger: MetricLogger | None = field(default=None, init=False, repr=False)
    _resumed: bool = field(default=False, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.app_state.update(model=self.objective, optimizer=self.optimizer, progress=self.progress)
        if self.scaler.enabled:  # fp16: the loss scale is part of what an exact resume restores
            self.app_state["grad_scaler"] = self.scaler

    # ------------------------------------------------------------------------------------------ parts
    @property
    def objective(self) -> SSLObjective:
        return self.training_step.objective

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.training_step.optimizer

    @property
    def scaler(self) -> LossScaler:
        return self.training_step.scaler

    @property
    def device(self) -> torch.device:
        return self.training_step.device

    @property
    def precision(self) -> torch.dtype | None:
        """The autocast dtype (``None``: fp32)."""
        return self.training_step.precision

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def iteration(self) -> int:
        """Optimizer steps taken (= batches consumed); the next step is this iteration."""
        return self.progress.iteration

    @property
    def epoch_length(self) -> int:
        return self.cfg.train.iterations_per_epoch

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size_per_gpu * self.env.world_size

    @property
    def stop_at(self) -> int:
        """The last iteration: ``optim.epochs`` epochs, or ``train.max_iterations`` when smaller."""
        total = self.cfg.optim.epochs * self.epoch_length
        return min(total, self.cfg.train.max_iterations or total)

    @property
    def logger(self) -> MetricLogger:
        """The metric log (opened by :meth:`resume`; a Run without ``output_dir`` logs nothing)."""
        self._require_resumed("log")
        if self._logger is None:
            self._logger = MetricLogger(Path(), enabled=False)
        return self._logger

    # ------------------------------------------------------------------------------------- lifecycle
    def add_state(self, name: str, stateful: Any) -> None:
        """Checkpoint ``stateful`` (``state_dict`` / ``load_state_dict``) under ``name`` with the run."""
        if self._resumed:
            raise RuntimeError(f"add_state({name!r}) after resume(): its state would not have been restored")
        if name in self.app_state:
            raise ValueError(f"add_state({name!r}): the run's checkpoint already holds {name!r}")
        self.app_state[name] = stateful

    def resume(self) -> Path | None:
        """Continue from the latest intact checkpoint of ``output_dir`` (returns it; ``None`` for a fresh
        run), then write ``config.yaml`` and open the data stream and the metric log at the iteration
        reached. Call it once, before anything is stepped, saved or logged."""
        if self._resumed or self._closed:
            raise RuntimeError(f"resume() was already called on this run{' (closed since)' if self._closed else ''}")
        path = self._load_latest() if self.checkpoints is not None else None
        if self.output_dir is not None and self.is_main:  # after the checks: a refused resume keeps config.yaml
            save_config(self.cfg, self.output_dir / "config.yaml")
        self._resumed = True
        self._stream = self._open_stream()
        self._logger = self._open_logger()
        return path

    def start_at(self, iteration: int) -> None:
        """Begin at ``iteration`` without a checkpoint, as a run resumed there would (the schedules, the step
        seeds and the stream's first batch follow it; the weights are the fresh ones): benchmarks time the
        steady state after DINO's prototype freeze, the golden step records the iterations around it. Only
        before anything is drawn or stepped (with an ``output_dir``: before :meth:`resume`, whose checkpoint,
        if one is found, wins)."""
        if iteration < 0:
            raise ValueError(f"start_at({iteration}): the iteration must be >= 0")
        if self._stream is not None or self.iteration != 0 or self._closed:
            raise RuntimeError(
                f"start_at({iteration}) on a run at iteration {self.iteration} whose stream is "
                f"{'open' if self._stream is not None else 'closed' if self._closed else 'not open'}: only a "
                "fresh run that has drawn and stepped nothing can start elsewhere"
            )
        self.progress.iteration = iteration

    def next_batch(self) -> dict[str, Any]:
        """Seed torch for the coming step, then draw its batch (on the run's device).

        Seeding first makes everything random in step ``i`` (stochastic depth, a batch drawn on this
        process) depend on ``(train.seed, rank, i)`` only, so a resumed run draws the same numbers.
        """
        self._require_resumed("draw batches")
        seed_step(self.cfg.train.seed, self.env.rank, self.iteration)
        if self._stream is None:
            self._stream = self._open_stream()
        return to_device(next(self._stream), self.device)

    def step(self, batch: Mapping[str, Any]) -> StepResult:
        """One optimizer step at :attr:`iteration` on ``batch`` (:class:`~dinolite.train.step.TrainingStep`);
        the iteration then advances by one."""
        self._require_resumed("step")
        result = self.training_step(batch, self.iteration)
        self.progress.iteration += 1
        return result

    def stop_requested(self) -> bool:
        """``hooks.stop_requested()`` on any rank (every rank gets the same answer); False without it."""
        stop = self.hooks.stop_requested
        return stop is not None and any_rank(bool(stop()), self.device)

    def save(self) -> Path:
        """Checkpoint the run at :attr:`iteration` (atomic; keeps ``train.keep_last_checkpoints``)."""
        self._require_resumed("save")
        if self.checkpoints is None:
            raise RuntimeError("this run has no output_dir: there is nowhere to save a checkpoint")
        return self.checkpoints.save(self.iteration, self.app_state, batches_consumed=self.iteration)

    def close(self) -> None:
        """Close the metric log (flushing it and the trackers) and the batch stream (a stream with a
        ``close()``, as :func:`~dinolite.train.batches.build_data_stream`'s, shuts its loader workers down
        now). Idempotent; the run steps, draws and saves no more."""
        if self._logger is not None:
            self._logger.close()
        stream, self._stream = self._stream, None
        close_stream = getattr(stream, "close", None)
        if callable(close_stream):
            close_stream()
        self._closed = True

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------- internals
    def _require_resumed(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"this run was closed: it cannot {what} any more (build another)")
        if self.output_dir is not None and not self._resumed:
            raise RuntimeError(
                f"the run in {self.output_dir} cannot {what} before resume() (which loads its latest "
                "checkpoint, if any)"
            )

    def _load_latest(self) -> Path | None:
        assert self.checkpoints is not None
        console = console_logger()
        if self.is_main:
            report_config_changes(self.checkpoints.latest(), self.cfg, console.info)
        resumed = self.checkpoints.load_latest_intact(self.app_state, warn=console.warning if self.is_main else _ignore)
        if resumed is None:
            return None
        path, info = resumed
        if info["batches_consumed"] != self.iteration:
            raise RuntimeError(
                f"{path}: batches_consumed={info['batches_consumed']} differs from "
                f"iteration={self.iteration}, but this loop takes exactly one batch per step"
            )
        if self.is_main:
            console.info(f"resumed from {path} at iteration {self.iteration}")
        return path

    def _open_stream(self) -> Iterator[dict[str, Any]]:
        request = StreamRequest(
            self.cfg,
            self.env.rank,
            self.env.world_size,
            start_batch=self.iteration,
            transform=self.method.build_transform(self.cfg),
            collate_fn=self.method.build_collate(self.cfg),
        )
        if self.batches is not None:
            return self.batches(request)
        check_data_source(self.cfg)
        name = builtin_set(self.cfg.data.source)
        if self.output_dir is None and name is not None:
            raise ConfigError(
                f"data.source=[{name}] builds its shards under the run's output_dir/data: give build_run an "
                "output_dir, or batches"
            )
        source = resolve_train_source(self.cfg, self.output_dir or Path(), self.is_main, lambda: barrier(self.device))
        return build_data_stream(request, source, worker_init_fn=self.hooks.data_worker_init)

    def _open_logger(self) -> MetricLogger:
        if self.output_dir is None:
            return MetricLogger(Path(), enabled=False)
        return MetricLogger.from_config(
            self.cfg,
            self.output_dir,
            enabled=self.is_main,
            resume_iteration=self.iteration,
            trackers=self._metric_sinks(),
        )

    def _metric_sinks(self) -> Sequence[MetricSink]:
        """The trackers of ``train.loggers`` on the main process (none elsewhere: only it writes records)."""
        if not self.is_main or self.output_dir is None:
            return ()
        if self.hooks.metric_sinks is None:
            if self.cfg.train.loggers:
                console_logger().warning(
                    f"train.loggers={list(self.cfg.train.loggers)} is ignored: the run was built without "
                    "RunHooks.metric_sinks (dinolite.jobs.training.train_in_job passes the trackers)"
                )
            return ()
        return self.hooks.metric_sinks(self.cfg, self.output_dir)
