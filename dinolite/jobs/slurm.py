"""The submitit job callables that run inside a Slurm job: training with preemption -> checkpoint ->
requeue, and any entry point (an evaluation). Submitting them is :mod:`dinolite.jobs.slurm_submit`.

Preemption protocol (what happens on the signal Slurm sends before a time limit or a preemption)
-----------------------------------------------------------------------------------------------
Submitit asks Slurm for ``--signal=USR2@<signal_delay_s>`` and, inside the job, installs a USR2 handler
that on rank 0 immediately calls ``checkpoint()``, runs ``scontrol requeue`` and exits. That cannot
checkpoint a sharded model: every rank must take part in the (collective) save, and the handler fires
in the middle of a training step. So while training runs, :class:`SlurmTrainingJob` replaces the
handler with :class:`StopFlag`, which only records the signal. The loop polls ``stop_requested`` once
per iteration and agrees across ranks (all-reduce) to stop, writes a checkpoint through the same
atomic path as periodic ones and returns ``status == "preempted"``. Then every rank waits for the
others, rank 0 runs ``scontrol requeue <job id>``, and all ranks exit without a result so that the
requeued job (same job id, same output directory) resumes from the latest checkpoint.

The number of requeues is bounded by ``max_requeues``, counted with ``SLURM_RESTART_COUNT`` (Slurm's
own count of requeues of this job id). Submitit's countdown is not used: its ``has_timed_out`` treats
every USR2 as a time-out when ``timeout_min < 10`` (its guaranteed wall time,
``min(0.8 * T, T - 10 min)``, is then negative), which would burn the requeue budget on preemptions.
Submitit's own handler only remains in force before training starts (imports, data preparation); it
then resubmits the job unchanged, which is also correct because all state lives on disk.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections before a config is read)
from dinolite.config import OptIns, config_from_dict
from dinolite.distributed import any_rank, barrier, destroy_distributed
from dinolite.extras import optional_import
from dinolite.io import write_json_atomic  # noqa: F401 - also this module's API (tests write attempts with it)
from dinolite.jobs.console import configure_console
from dinolite.jobs.run_lock import hold_run_lock
from dinolite.jobs.slurm_submit import ATTEMPTS_FILE, SlurmLaunchError, resolve_job_dir
from dinolite.jobs.stop_signals import StopFlag

# submitit is the ``slurm`` extra: importing this module without it names the pip install to run
submitit = optional_import("submitit", extra="slurm", purpose="Slurm submission (dinolite-slurm)")
Checkpointable = submitit.helpers.Checkpointable

DEFAULT_TRAIN_ENTRY = "dinolite.jobs.training:train_in_job"
# Exit status of a task that stopped because its job was requeued (what submitit uses: sys.exit(-1)).
REQUEUED_EXIT_CODE = 255


@dataclass(frozen=True)
class SlurmTask:
    """This task's place in its Slurm job, from the variables srun sets."""

    job_id: str
    rank: int
    restart_count: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "SlurmTask":
        if "SLURM_JOB_ID" not in environ:
            raise RuntimeError("SLURM_JOB_ID is not set: this callable runs inside a Slurm job (launch/slurm.py)")
        job_id = environ["SLURM_JOB_ID"]
        if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
        return cls(
            job_id=job_id,
            rank=int(environ.get("SLURM_PROCID", "0")),
            restart_count=int(environ.get("SLURM_RESTART_COUNT", "0") or 0),
        )


def preemption_signal() -> signal.Signals:
    """The signal Slurm sends before a time limit / preemption: submitit's (USR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise)."""
    name = "SIG" + submitit.JobEnvironment.USR_SIG
    if not hasattr(signal, name):
        raise RuntimeError(f"unknown preemption signal {name} (check SUBMITIT_PREEMPT_SIGNAL)")
    return signal.Signals(getattr(signal, name))


def scontrol_requeue(job_id: str) -> None:
    """Put a running job back in the queue (Slurm stops its tasks; it restarts with the same id)."""
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60, capture_output=True, text=True)


def resolve_callable(entry: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (callables are returned as they are)."""
    if callable(entry):
        return entry
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise SlurmLaunchError(f"entry {entry!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), attr)


def record_attempt(output_dir: Path, attempt: Mapping[str, Any]) -> list[dict]:
    """Append one run of the job (a first start or a requeue) to ``<output_dir>/slurm_attempts.json``."""
    path = output_dir / ATTEMPTS_FILE
    attempts = json.loads(path.read_text()) if path.exists() else []
    attempts.append(dict(attempt))
    write_json_atomic(path, attempts)
    return attempts


@dataclass
class SlurmTrainingJob(Checkpointable):
    """The submitit job that trains: ``train(cfg, output_dir, env, stop_requested)`` on every task.

    ``config`` is the resolved config as a plain dict (validated before submission, re-validated
    here); ``output_dir`` may contain ``%j``. ``train_entry`` is ``"module:function"`` (or a callable)
    with the signature of ``dinolite.jobs.training.train_in_job`` (``train()`` with the trackers); ``init_distributed`` likewise for
    ``dinolite.distributed.init_distributed``. ``requeue`` puts the job back in the queue.
    A preempted run is requeued at most ``max_requeues`` times (``SLURM_RESTART_COUNT``); after that
    the job ends with its checkpoint and the ``"preempted"`` result, and resubmitting it with the same
    output directory resumes.
    """

    config: dict
    output_dir: str
    max_requeues: int = 10
    train_entry: Union[str, Callable[..., Any]] = DEFAULT_TRAIN_ENTRY
    init_distributed_entry: Union[str, Callable[..., Any]] = "dinolite.distributed:init_distributed"
    requeue: Callable[[str], None] = field(default=scontrol_requeue)
    # What the user allowed the config to do at submission (--allow-pipe-sources, ...): the job reads the
    # config again (and, on a requeue, the checkpoint's), in an environment Slurm may not have copied.
    opt_ins: OptIns = field(default_factory=OptIns)

    def __call__(self) -> Any:
        return self.run(os.environ)

    def run(self, environ: Mapping[str, str]) -> Any:
        with self.opt_ins.applied():
            return self._run(environ)

    def _run(self, environ: Mapping[str, str]) -> Any:
        task = SlurmTask.from_environ(environ)
        output_dir = resolve_job_dir(self.output_dir, task.job_id)
        cfg = config_from_dict(self.config, source="the config this Slurm job was submitted with")
        cfg.train.output_dir = str(output_dir)
        configure_console()  # the trainer's lines go to the job's stdout log
        flag = StopFlag(prefix="[dinolite.slurm]")
        signum = preemption_signal()
        previous = signal.signal(signum, flag.handle)
        try:
            init = resolve_callable(self.init_distributed_entry)
            env = init(backend=cfg.distributed.backend, device=cfg.train.device)
            collective_device = env.device if getattr(env, "backend", "") == "nccl" else "cpu"
            with hold_run_lock(output_dir, env.rank == 0, collective_device):  # one run per output directory
                result = resolve_callable(self.train_entry)(cfg, output_dir, env, flag.is_set)
            requeue = result.status == "preempted" and task.restart_count < self.max_requeues
            if env.rank == 0:
                record_attempt(output_dir, _attempt_record(task, result, flag, requeue))
            if result.status == "preempted":
                if not requeue:
                    print(
                        f"[dinolite.slurm] preempted after {task.restart_count} requeues (max_requeues="
                        f"{self.max_requeues}): not requeuing; resubmit with the same output dir to resume",
                        flush=True,
                    )
                else:
                    self._requeue_collectively(task, env)
            return result
        finally:
            signal.signal(signum, previous)
            destroy_distributed()

    def _requeue_collectively(self, task: SlurmTask, env: Any) -> None:
        """Every rank has finished the checkpoint: rank 0 requeues, then every rank exits result-less."""
        device = env.device if getattr(env, "backend", "") == "nccl" else "cpu"
        barrier(device)
        failure = ""
        if env.rank == 0:
            try:
                self.requeue(task.job_id)
                print(f"[dinolite.slurm] requeued job {task.job_id} (restart {task.restart_count + 1})", flush=True)
            except (subprocess.SubprocessError, OSError) as exc:
                failure = f"{exc}: {getattr(exc, 'stderr', '') or ''}".strip()
        if any_rank(bool(failure), device):
            raise RuntimeError(
                f"job {task.job_id} checkpointed but could not be requeued ({failure or 'failed on rank 0'}); "
                "resubmit with the same output dir to resume"
            )
        destroy_distributed()
        # SystemExit is not an Exception: submitit writes no result file, so the job is not "done".
        raise SystemExit(REQUEUED_EXIT_CODE)


def _attempt_record(task: SlurmTask, result: Any, flag: StopFlag, requeued: bool) -> dict:
    checkpoint = getattr(result, "checkpoint_path", None)
    return {
        "job_id": task.job_id,
        "restart_count": task.restart_count,
        "status": result.status,
        "iteration": int(result.iteration),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "signal": flag.signal_name,
        "requeued": requeued,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


@dataclass
class SlurmEntrypointJob(Checkpointable):
    """Run a module (``python -m``) or a script on every task, e.g. ``eval/knn.py``.

    The entry point sets up its own process group from the Slurm variables
    (``dinolite.distributed.init_distributed``). A preempted evaluation is requeued by submitit
    and starts again from the beginning (evaluations are short and write their results at the end).
    """

    target: str
    argv: list[str]
    is_module: bool
    opt_ins: OptIns = field(default_factory=OptIns)  # the user's grant at submission (e.g. an export reads a config)

    def __call__(self) -> int:
        saved_argv = sys.argv
        sys.argv = [self.target, *self.argv]
        try:
            with self.opt_ins.applied():
                self._run_target()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise RuntimeError(f"{self.target} {' '.join(self.argv)} exited with status {exc.code}") from None
        finally:
            sys.argv = saved_argv
        return 0

    def _run_target(self) -> None:
        if self.is_module:
            runpy.run_module(self.target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(self.target, run_name="__main__")
