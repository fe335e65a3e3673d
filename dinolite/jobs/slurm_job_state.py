"""A submitted Slurm job's state, from the controller (``scontrol``) without an accounting database.

Works on clusters without ``sacct``/slurmdbd (and needs no submitit), as long as the job finished less
than ``MinJobAge`` seconds ago; used to wait for jobs in the Slurm tests and by anyone scripting around
``dinolite-slurm``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from typing import Callable

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
