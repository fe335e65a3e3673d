"""Submitting to Slurm through submitit: what to ask for (resources -> sbatch parameters), the batch
script, the executor, and where a job's logs, checkpoints and requeue history go.

The launchers (``dinolite.commands.slurm``, the lab's ``slurm_array``) build their submission from
here; the callables that run inside the job are in :mod:`dinolite.jobs.slurm`, and polling a submitted
job's state is :mod:`dinolite.jobs.slurm_job_state`.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from dinolite.extras import optional_import

# submitit is the ``slurm`` extra: importing this module without it names the pip install to run
submitit = optional_import("submitit", extra="slurm", purpose="Slurm submission (dinolite-slurm)")

ATTEMPTS_FILE = "slurm_attempts.json"
LOG_DIR_NAME = "slurm_logs"
CHECKPOINT_DIR_NAME = "checkpoints"


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
