"""The tiny lab matrix as one Slurm job array on a real Slurm (CI: `eval "$(.ci/slurm/start.sh)"`):
both array tasks train and evaluate their run, the last one to finish writes the report, and a second
submission finds nothing left to do. Skipped when no Slurm is reachable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dinolite.jobs import slurm_job_state, slurm_submit
from dinolite.lab.traces import read_result
from tests.jobs.test_slurm import _slurm_unreachable_reason
from tests.lab.test_lab_end_to_end import ITERATIONS, tiny_matrix

ROOT = Path(__file__).resolve().parents[2]
_REASON = _slurm_unreachable_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
JOB_TIMEOUT_S = 600


def launch(matrix: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "lab.py"),
            "--matrix",
            str(matrix),
            "--slurm",
            "--gpus-per-node",
            "0",
            "--cpus-per-task",
            "1",
            "--time",
            "15",
            "--job-name",
            "dinolite-ci-lab",
            "--max-requeues",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def logs(log_dir: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
        for p in sorted(log_dir.glob("*_log.*"))
    )


def test_matrix_runs_as_a_job_array_and_the_last_task_writes_the_report(tmp_path):
    matrix = tiny_matrix(tmp_path)
    proc = launch(matrix)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(re.findall(r"submitted (\d+_\d+): (\S+) ->", proc.stdout))
    assert sorted(jobs.values()) == ["dino", "dino-no-centering"], proc.stdout
    assert len({job_id.split("_")[0] for job_id in jobs}) == 1  # one array
    out = tmp_path / "lab"
    for job_id in jobs:
        try:
            info = slurm_job_state.wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
        except TimeoutError:
            subprocess.run(["scancel", job_id.split("_")[0]], timeout=30)
            raise AssertionError(
                f"array task {job_id} did not finish\n{logs(out / slurm_submit.LOG_DIR_NAME)}"
            ) from None
        assert info.state == "COMPLETED", f"{job_id}: {info.state}\n{logs(out / slurm_submit.LOG_DIR_NAME)}"
    for label in jobs.values():
        result = read_result(out / label)
        assert result["status"] == "finished" and result["iteration"] == ITERATIONS
        assert "knn" in result and len(result["spectra"]) == 2
    page = (out / "report" / "README.md").read_text()
    assert "2 of 2 runs done" in page and (out / "report" / "std.png").is_file()
    again = launch(matrix)
    assert again.returncode == 0, again.stderr
    assert "finished earlier, not submitted: dino, dino-no-centering" in again.stdout
    assert "submitted" not in again.stdout.replace("not submitted", "")
