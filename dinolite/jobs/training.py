"""A training run as a job: what runs around :func:`dinolite.train.loop.train`.

:func:`train_in_job` is ``train()`` with what a job supplies (the experiment trackers of
``train.loggers``, data workers that ignore the stop signals); the Slurm job and the lab call it.
:func:`run_training_job` is the whole of ``dinolite-train`` after its config is read: the process group,
the stop signals, the run lock, training, the end-of-run kNN report and the exit status.

SIGTERM, SIGINT (Ctrl-C) and SIGUSR2 write a checkpoint at the next iteration on every rank; the run then
exits 0 with "run again to continue" (see :mod:`dinolite.jobs.stop_signals`).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch

from dinolite.checkpoint import CheckpointError, CheckpointManager
from dinolite.config import Config, ConfigError
from dinolite.distributed import DistributedEnv, destroy_distributed, init_distributed
from dinolite.eval.knn_report import format_report, knn_report
from dinolite.jobs.console import configure_console
from dinolite.jobs.run_lock import RunLockError, hold_run_lock
from dinolite.jobs.stop_signals import StopFlag, ignore_stop_signals
from dinolite.jobs.trackers import build_trackers
from dinolite.train.finite_check import NonFiniteStateError
from dinolite.train.loop import TrainResult, train
from dinolite.train.objective import SSLObjective
from dinolite.train.run import RunHooks
from dinolite.train.step import NonFiniteLossError

# Exit codes: 0 finished or stopped by a signal (run again to continue), 1 non-finite loss or bad input,
# 3 stopped by the collapse watchdog.
EXIT_OK, EXIT_ERROR, EXIT_COLLAPSE = 0, 1, 3


def train_in_job(
    cfg: Config,
    output_dir: str | Path | None = None,
    env: DistributedEnv | None = None,
    stop_requested: Callable[[], bool] | None = None,
    objective: SSLObjective | None = None,
) -> TrainResult:
    """:func:`~dinolite.train.loop.train` with the job's :class:`~dinolite.train.run.RunHooks`: ``stop_requested``,
    the trackers of ``train.loggers`` and data workers that ignore the stop signals (a group-wide SIGTERM /
    Ctrl-C must not kill them before the checkpoint)."""
    hooks = RunHooks(stop_requested, metric_sinks=build_trackers, data_worker_init=ignore_stop_signals)
    return train(cfg, output_dir, env, objective=objective, hooks=hooks)


@contextlib.contextmanager
def training_process(cfg: Config, output_dir: Path) -> Iterator[DistributedEnv]:
    """What a process sets up around one training run (``dinolite-train`` and the lab): torch's threads
    (``train.num_threads``), the process group and ``output_dir``'s run lock (rank 0 holds it: another
    process training into the same folder is refused). Yields the environment; on a normal exit the ranks
    leave the group together, after an error it is torn down at once."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    env = init_distributed(cfg.distributed.backend, cfg.train.device)
    device = torch.device(env.device) if env.device else torch.device("cpu")
    try:
        with hold_run_lock(output_dir, env.rank == 0, device):
            yield env
        destroy_distributed(leave_together=True)
    finally:
        destroy_distributed()


def run_training_job(cfg: Config) -> int:
    """Train the validated ``cfg`` into ``train.output_dir`` as ``dinolite-train`` does; the exit status.

    One run per output directory (rank 0 holds the lock); SIGTERM / SIGINT / SIGUSR2: checkpoint at the
    next iteration and exit 0. With ``evaluation.knn_at_end`` the main process then prints the kNN
    accuracy of the trained network next to the raw-pixel and random-init baselines.
    """
    console = configure_console()
    output_dir = Path(cfg.train.output_dir)
    is_new = not output_dir.exists()
    flag = StopFlag()
    result, rank = None, 0
    try:
        with training_process(cfg, output_dir) as env, flag.installed():
            rank = env.rank
            result = train_in_job(cfg, output_dir, env, stop_requested=flag.is_set)
    except (RunLockError, CheckpointError, NonFiniteLossError, NonFiniteStateError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:  # after the run lock is released
        if result is None and is_new and rank == 0:
            remove_failed_start(output_dir)
    device = torch.device(env.device) if env.device else torch.device("cpu")
    if result.status == "stopped":
        print(f"stopped: {result.message}", file=sys.stderr)
        return EXIT_COLLAPSE
    if result.status == "preempted":
        if env.rank == 0:
            print(
                f"stopped by {flag.signal_name or 'request'} at iteration {result.iteration}: checkpoint "
                f"{result.checkpoint_path}; run again to continue (the same command resumes)",
                file=sys.stderr,
            )
        return EXIT_OK
    if env.rank == 0:
        console.info(f"{result.status} at iteration {result.iteration}; checkpoint {result.checkpoint_path}")
    if result.status == "finished" and cfg.evaluation.knn_at_end and env.rank == 0 and result.checkpoint_path:
        results = knn_report(cfg, result.checkpoint_path, output_dir, device)
        console.info(format_report(results, cfg.evaluation.knn_k))
    return EXIT_OK


def remove_failed_start(output_dir: Path) -> bool:
    """Remove the run folder that a failed start created (it did not exist before this run), so the
    next attempt does not find a half-made run; True if removed.

    A folder with a checkpoint or logged metrics is kept whatever went wrong (nothing written by
    training is lost: a run that failed at iteration 50 keeps its ``metrics.jsonl`` for the diagnosis).
    """
    if not output_dir.is_dir() or CheckpointManager(output_dir).latest() is not None:
        return False
    if (output_dir / "metrics.jsonl").exists() and (output_dir / "metrics.jsonl").stat().st_size > 0:
        return False
    shutil.rmtree(output_dir, ignore_errors=True)
    return True
