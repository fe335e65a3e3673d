"""Running dinolite under Slurm through submitit: resources -> sbatch, the job callables, requeue.

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
import re
import runpy
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from dinolite.config import config_from_dict
from dinolite.dist import any_rank, barrier, destroy_distributed
from dinolite.extras import optional_import
from dinolite.io import write_json_atomic  # noqa: F401 - also this module's API (tests write attempts with it)
from dinolite.train.run_lock import hold_run_lock
from dinolite.train.stop_signals import StopFlag

# submitit is the ``slurm`` extra: importing this module without it names the pip install to run
submitit = optional_import("submitit", extra="slurm", purpose="Slurm submission (dinolite-slurm)")
Checkpointable = submitit.helpers.Checkpointable

DEFAULT_TRAIN_ENTRY = "dinolite.train.loop:train"
ATTEMPTS_FILE = "slurm_attempts.json"
LOG_DIR_NAME = "slurm_logs"
CHECKPOINT_DIR_NAME = "checkpoints"
# Exit status of a task that stopped because its job was requeued (what submitit uses: sys.exit(-1)).
REQUEUED_EXIT_CODE = 255


class SlurmLaunchError(ValueError):
    """A launch request that cannot work (bad resources, unknown entry point); the message says which."""


# --------------------------------------------------------------------------------------------------
# Resources -> sbatch parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmResources:
    """What to ask Slurm for. One task per GPU; ``gpus_per_node == 0`` means a CPU job whose task count
    per node is ``tasks_per_node``. ``time_min`` is the wall-time limit in minutes."""

    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: Optional[int] = None  # None: one per GPU (GPU jobs) or 1 (CPU jobs)
    cpus_per_task: Optional[int] = None  # None: 10 per GPU task (DINOv2's launcher), 1 per CPU task
    mem_gb: Optional[float] = None  # None: the partition's default
    time_min: int = 2800
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    comment: Optional[str] = None
    job_name: str = "dinolite"
    signal_delay_s: int = 120  # USR2 arrives this long before the time limit: room to checkpoint

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def cpus(self) -> int:
        if self.cpus_per_task is not None:
            return self.cpus_per_task
        return 10 if self.gpus_per_node > 0 else 1

    def validate(self) -> None:
        """Raise :class:`SlurmLaunchError` naming the option at fault."""
        for name in ("nodes", "time_min", "signal_delay_s"):
            if getattr(self, name) < 1:
                raise SlurmLaunchError(f"{_flag(name)}={getattr(self, name)}: must be >= 1")
        if self.gpus_per_node < 0:
            raise SlurmLaunchError(f"--gpus-per-node={self.gpus_per_node}: must be >= 0")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise SlurmLaunchError(f"--tasks-per-node={self.tasks_per_node}: must be >= 1")
        if self.gpus_per_node > 0 and self.tasks_per_node not in (None, self.gpus_per_node):
            raise SlurmLaunchError(
                f"--tasks-per-node={self.tasks_per_node} with --gpus-per-node={self.gpus_per_node}: GPU jobs run "
                "one task per GPU; leave --tasks-per-node out, or pass --gpus-per-node 0 for a CPU job"
            )
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SlurmLaunchError(f"--cpus-per-task={self.cpus_per_task}: must be >= 1")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise SlurmLaunchError(f"--mem-gb={self.mem_gb}: must be > 0")
        if self.time_min * 60 <= self.signal_delay_s:
            raise SlurmLaunchError(
                f"--time={self.time_min} minutes is not longer than the {self.signal_delay_s} s warning signal: "
                "the job would be told to stop as soon as it starts"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.job_name):
            raise SlurmLaunchError(f"--job-name={self.job_name!r}: use letters, digits and _.+- only")


def _flag(name: str) -> str:
    return "--" + {"time_min": "time"}.get(name, name).replace("_", "-")


def sbatch_parameters(resources: SlurmResources, setup: Sequence[str] = ()) -> dict[str, Any]:
    """Parameters for ``submitit.SlurmExecutor.update_parameters`` (submitit's sbatch key names)."""
    resources.validate()
    params: dict[str, Any] = {
        "job_name": resources.job_name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.ntasks_per_node,
        "cpus_per_task": resources.cpus,
        "time": resources.time_min,
        "signal_delay_s": resources.signal_delay_s,
        "stderr_to_stdout": False,
        # Requeueable whatever the cluster's JobRequeue default is: preemption resumes through requeue.
        "additional_parameters": {"requeue": True},
        "setup": list(setup),
    }
    if resources.gpus_per_node > 0:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.mem_gb is not None:
        params["mem"] = _mem_string(resources.mem_gb)
    for name in ("partition", "account", "qos", "constraint", "exclude", "comment"):
        value = getattr(resources, name)
        if value:
            params[name] = value
    return params


def _mem_string(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}MB"


def job_setup_lines(resources: SlurmResources, source_root: Path) -> list[str]:
    """Shell lines run before ``srun`` in the batch script.

    ``PYTHONPATH`` puts the submitting checkout first, so the job runs the code that was submitted even
    when the package is not installed; ``OMP_NUM_THREADS`` keeps each task to the CPUs it was given.
    """
    return [
        f"export PYTHONPATH={shlex.quote(str(source_root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export OMP_NUM_THREADS={resources.cpus}",
    ]


def submitit_command(log_dir: Path, python: str = sys.executable) -> str:
    """The command the batch script runs under srun (what ``SlurmExecutor`` generates)."""
    return f"{shlex.quote(python)} -u -m submitit.core._submit {shlex.quote(str(log_dir))}"


def render_sbatch_script(parameters: Mapping[str, Any], log_dir: Path, python: str = sys.executable) -> str:
    """The exact batch script ``SlurmExecutor`` would submit for ``parameters`` (for ``--dry-run``).

    Uses submitit's own script writer so the dry run cannot drift from the real submission; it needs
    no Slurm installation.
    """
    # The writer behind SlurmExecutor (private to submitit), imported only for the dry run.
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submitit_command(log_dir, python), folder=str(log_dir), **parameters)


def log_dir_for(output_dir: str | Path) -> Path:
    """Where submitit writes pickles and logs: ``<output_dir>/slurm_logs``.

    When the output directory contains ``%j`` the log folder goes next to its first ``%j``-free parent
    instead: Slurm opens the log files before the job can create a per-job directory. Log file names
    carry the job id either way.
    """
    output_dir = Path(output_dir).expanduser().absolute()
    if "%j" not in str(output_dir):
        return output_dir / LOG_DIR_NAME
    parts = output_dir.parts
    first = next(i for i, part in enumerate(parts) if "%j" in part)
    return Path(*parts[:first]) / LOG_DIR_NAME


def resolve_job_dir(path: str | Path, job_id: str) -> Path:
    """Replace ``%j`` by the Slurm job id (a requeued job keeps its id, hence its directory)."""
    return Path(str(path).replace("%j", job_id))


def make_executor(log_dir: Path, parameters: Mapping[str, Any], max_requeues: int) -> submitit.SlurmExecutor:
    """A ``SlurmExecutor`` writing into ``log_dir``. Raises ``RuntimeError`` when ``srun`` is missing."""
    executor = submitit.SlurmExecutor(folder=log_dir, max_num_timeout=max_requeues)
    executor.update_parameters(**parameters)
    return executor


# --------------------------------------------------------------------------------------------------
# Inside the job
# --------------------------------------------------------------------------------------------------


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
    with the signature of ``dinolite.train.loop.train``; ``init_distributed`` likewise for
    ``dinolite.dist.init_distributed``. ``requeue`` puts the job back in the queue.
    A preempted run is requeued at most ``max_requeues`` times (``SLURM_RESTART_COUNT``); after that
    the job ends with its checkpoint and the ``"preempted"`` result, and resubmitting it with the same
    output directory resumes.
    """

    config: dict
    output_dir: str
    max_requeues: int = 10
    train_entry: Union[str, Callable[..., Any]] = DEFAULT_TRAIN_ENTRY
    init_distributed_entry: Union[str, Callable[..., Any]] = "dinolite.dist:init_distributed"
    requeue: Callable[[str], None] = field(default=scontrol_requeue)

    def __call__(self) -> Any:
        return self.run(os.environ)

    def run(self, environ: Mapping[str, str]) -> Any:

        task = SlurmTask.from_environ(environ)
        output_dir = resolve_job_dir(self.output_dir, task.job_id)
        cfg = config_from_dict(self.config)
        cfg.train.output_dir = str(output_dir)
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
    (``dinolite.dist.init_distributed``). A preempted evaluation is requeued by submitit
    and starts again from the beginning (evaluations are short and write their results at the end).
    """

    target: str
    argv: list[str]
    is_module: bool

    def __call__(self) -> int:
        saved_argv = sys.argv
        sys.argv = [self.target, *self.argv]
        try:
            if self.is_module:
                runpy.run_module(self.target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(self.target, run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise RuntimeError(f"{self.target} {' '.join(self.argv)} exited with status {exc.code}") from None
        finally:
            sys.argv = saved_argv
        return 0


# --------------------------------------------------------------------------------------------------
# Job state without an accounting database
# --------------------------------------------------------------------------------------------------

FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)


@dataclass(frozen=True)
class SlurmJobInfo:
    job_id: str
    state: str
    restarts: int
    exit_code: str

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def parse_scontrol_job(text: str) -> SlurmJobInfo:
    """Parse ``scontrol show job -o ID`` (one line of ``Key=Value`` pairs)."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    missing = [k for k in ("JobId", "JobState") if k not in fields]
    if missing:
        raise ValueError(f"unexpected `scontrol show job` output (no {', '.join(missing)}): {text[:200]!r}")
    return SlurmJobInfo(
        job_id=fields["JobId"],
        state=fields["JobState"],
        restarts=int(fields.get("Restarts", "0")),
        exit_code=fields.get("ExitCode", ""),
    )


def query_job(job_id: str) -> SlurmJobInfo:
    """The job's state from the controller (``scontrol``): works without ``sacct``/slurmdbd, as long
    as the job finished less than ``MinJobAge`` seconds ago."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], check=True, timeout=30, capture_output=True, text=True
    )
    return parse_scontrol_job(out.stdout.strip())


def wait_for_job(
    job_id: str,
    timeout_s: float,
    poll_s: float = 2.0,
    until: Callable[[SlurmJobInfo], bool] = lambda info: info.finished,
) -> SlurmJobInfo:
    """Poll ``scontrol`` until ``until(info)`` (default: a final state); ``TimeoutError`` after
    ``timeout_s`` naming the last state seen. Bounded, unlike waiting on submitit's ``sacct`` watcher."""
    deadline = time.monotonic() + timeout_s
    info = query_job(job_id)
    while not until(info):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Slurm job {job_id} still {info.state} (restarts={info.restarts}) after {timeout_s:.0f} s"
            )
        time.sleep(poll_s)
        info = query_job(job_id)
    return info


def describe_submission(job_id: str, log_dir: Path, output_dir: Path, num_tasks: int) -> str:
    """What the launcher prints after submitting: job id, logs, where checkpoints go."""
    paths = submitit.core.utils.JobPaths(log_dir, job_id=job_id, task_id=0)
    out_dir = resolve_job_dir(output_dir, job_id)
    lines = [
        f"submitted job {job_id} ({num_tasks} tasks)",
        f"  stdout (task 0): {paths.stdout}",
        f"  stderr (task 0): {paths.stderr}",
        f"  logs of task t:  {log_dir / f'{job_id}_<t>_log.out'}",
        f"  output dir:      {out_dir}",
        f"  checkpoints:     {out_dir / CHECKPOINT_DIR_NAME}",
        f"  requeue history: {out_dir / ATTEMPTS_FILE}",
        f"  state:           scontrol show job {job_id}",
    ]
    return "\n".join(lines)
