"""Real Slurm jobs through launch/slurm.py: the demo config as a 2-task gloo job, the same job on 2 nodes of
1 task each (bitwise the same weights), and a running job interrupted with `scancel --signal=USR2` that must
checkpoint, be requeued, resume and end exactly where the uninterrupted run ends (same iteration count, same
weights).

Needs a reachable Slurm with a free node of >= 2 CPUs (CI: `eval "$(.ci/slurm/start.sh)"`, which starts two
nodes on the one machine, each its own slurmd); skipped otherwise, and the 2-node test also without 2 nodes. Jobs are polled through `scontrol` with deadlines: there is no accounting database (sacct).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dinolite.jobs import slurm_job_state, slurm_submit

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "launch" / "slurm.py"
ITERATIONS = 10
# Tiny demo run: 2 CPU tasks, no periodic checkpoint (the only mid-run one is the preemption's), one
# metrics line per iteration so the test sees the job making progress.
OVERRIDES = [
    f"train.max_iterations={ITERATIONS}",
    "train.checkpoint_every=1000",
    "train.log_every=1",
    "train.batch_size_per_gpu=4",
    "crops.local_crops_number=2",
    "train.device=cpu",
    "data.shuffle_buffer=100",
    "monitor.every=0",
    "evaluation.knn_at_end=false",
]
JOB_TIMEOUT_S = 480  # generous: CI machines are shared; an idle 2-core box needs well under a minute


def _slurm_unreachable_reason() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return 'no Slurm here: sbatch/scontrol not on PATH (CI starts one with `eval "$(.ci/slurm/start.sh)"`)'
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t %c"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Slurm not reachable: {exc}"
    if "is UP" not in ping.stdout:
        return f"slurmctld not reachable (`scontrol ping`: {(ping.stdout + ping.stderr).strip()!r}); run .ci/slurm/start.sh"
    rows = [line.split() for line in nodes.stdout.splitlines() if line.strip()]
    if not any(state in ("idle", "mix", "alloc", "comp") and int(cpus) >= 2 for state, cpus in rows):
        return f"no usable Slurm node with >= 2 CPUs (sinfo state/CPUs: {nodes.stdout.strip()!r})"
    return None


_REASON = _slurm_unreachable_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _usable_nodes() -> int:
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    rows = {tuple(line.split()) for line in nodes.stdout.splitlines() if line.strip()}
    return sum(state in ("idle", "mix", "alloc", "comp") for _, state in rows)


def submit(output_dir: Path, job_name: str, nodes: int = 1, tasks_per_node: int = 2) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "--config",
            "demo",
            "--gpus-per-node",
            "0",
            "--nodes",
            str(nodes),
            "--tasks-per-node",
            str(tasks_per_node),
            "--cpus-per-task",
            "1",
            "--time",
            "15",
            "--job-name",
            job_name,
            "--max-requeues",
            "2",
            "--output-dir",
            str(output_dir),
            *OVERRIDES,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(rf"submitted job (\d+) \({nodes * tasks_per_node} tasks\)", proc.stdout)
    assert match, proc.stdout
    assert f"checkpoints:     {output_dir / 'checkpoints'}" in proc.stdout
    return match.group(1)


def logs(output_dir: Path, job_id: str) -> str:
    """The tails of every task's logs, for assertion messages."""
    parts = []
    for path in sorted((output_dir / slurm_submit.LOG_DIR_NAME).glob(f"{job_id}_*_log.*")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(parts)


def wait_finished(job_id: str, output_dir: Path) -> slurm_job_state.SlurmJobInfo:
    try:
        return slurm_job_state.wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
    except TimeoutError:
        subprocess.run(["scancel", job_id], timeout=30)
        raise AssertionError(f"job {job_id} did not finish in {JOB_TIMEOUT_S} s\n{logs(output_dir, job_id)}") from None


def attempts(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / slurm_submit.ATTEMPTS_FILE).read_text())


def logged_iterations(output_dir: Path) -> list[int]:
    path = output_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines() if line.strip()]


def teacher_backbone(checkpoint: str) -> dict[str, torch.Tensor]:
    from dinolite.checkpoint import load_consolidated_state_dict

    return load_consolidated_state_dict(checkpoint, model="teacher", part="backbone")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job_id = submit(output_dir, "dinolite-ci-demo")
    info = wait_finished(job_id, output_dir)
    assert info.state == "COMPLETED", f"job {job_id} ended {info.state} ({info.exit_code})\n{logs(output_dir, job_id)}"
    return output_dir


def test_demo_two_task_job_trains_to_a_checkpoint(uninterrupted):
    runs = attempts(uninterrupted)
    assert [(a["restart_count"], a["status"], a["iteration"], a["requeued"]) for a in runs] == [
        (0, "finished", ITERATIONS, False)
    ]
    checkpoint = Path(runs[0]["checkpoint"])
    assert checkpoint.is_dir() and uninterrupted / "checkpoints" in checkpoint.parents
    weights = teacher_backbone(str(checkpoint))
    assert "cls_token" in weights and all(torch.isfinite(t).all() for t in weights.values())
    assert logged_iterations(uninterrupted) == list(range(1, ITERATIONS + 1))
    assert (
        "2 process(es)"
        in (uninterrupted / slurm_submit.LOG_DIR_NAME)
        .joinpath(next(p.name for p in (uninterrupted / slurm_submit.LOG_DIR_NAME).glob("*_0_log.out")))
        .read_text()
    )


@pytest.mark.skipif(_REASON is None and _usable_nodes() < 2, reason="the Slurm here has fewer than 2 usable nodes")
def test_two_nodes_of_one_task_train_the_weights_of_one_node_of_two_tasks(uninterrupted, tmp_path):
    """The rendezvous across nodes (the master is the first host of the job's node list, every rank derives the
    port from the job id) gives the same 2-rank run: the same ranks, the same data, the same collectives."""
    output_dir = tmp_path / "two_nodes"
    job_id = submit(output_dir, "dinolite-ci-2nodes", nodes=2, tasks_per_node=1)
    info = wait_finished(job_id, output_dir)
    assert info.state == "COMPLETED", f"job {job_id} ended {info.state} ({info.exit_code})\n{logs(output_dir, job_id)}"
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    fields = dict(item.split("=", 1) for item in shown.stdout.split() if "=" in item)
    assert fields["NumNodes"] == "2" and "," in fields["NodeList"], shown.stdout  # two slurmd, one task each
    assert logged_iterations(output_dir) == list(range(1, ITERATIONS + 1))
    reference = teacher_backbone(attempts(uninterrupted)[0]["checkpoint"])
    two_nodes = teacher_backbone(attempts(output_dir)[0]["checkpoint"])
    assert reference.keys() == two_nodes.keys()
    assert all(torch.equal(two_nodes[key], reference[key]) for key in reference)


def test_usr2_checkpoints_requeues_and_resumes_without_loss(uninterrupted, tmp_path):
    output_dir = tmp_path / "preempted"
    job_id = submit(output_dir, "dinolite-ci-preempt")

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(logged_iterations(output_dir)) < 2:  # training is under way on both ranks
        assert time.monotonic() < deadline, f"job {job_id} made no progress\n{logs(output_dir, job_id)}"
        assert not slurm_job_state.query_job(job_id).finished, f"job {job_id} ended early\n{logs(output_dir, job_id)}"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

    info = wait_finished(job_id, output_dir)
    assert info.state == "COMPLETED", f"job {job_id} ended {info.state}\n{logs(output_dir, job_id)}"
    assert info.restarts == 1, logs(output_dir, job_id)
    runs = attempts(output_dir)
    assert [(a["restart_count"], a["status"], a["requeued"], a["signal"]) for a in runs] == [
        (0, "preempted", True, "SIGUSR2"),
        (1, "finished", False, None),
    ], runs
    stopped_at = runs[0]["iteration"]
    assert 2 <= stopped_at < ITERATIONS, f"the signal did not interrupt the run: {runs}"
    assert runs[1]["iteration"] == ITERATIONS

    # No iteration lost or repeated: the first run logged 1..k, the requeued one k+1..N.
    assert logged_iterations(output_dir) == list(range(1, ITERATIONS + 1))
    # And the resumed run ends with the very weights of the uninterrupted one.
    reference = teacher_backbone(attempts(uninterrupted)[0]["checkpoint"])
    resumed = teacher_backbone(runs[1]["checkpoint"])
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], msg=lambda m, key=key: f"{key}: {m}")
