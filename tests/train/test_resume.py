"""Exact resume: SIGKILL at an arbitrary iteration, restart, finish bitwise equal to an uninterrupted run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import scale_launch
import torch

STEPS = 8
ARGS = ["--steps", str(STEPS), "--checkpoint-every", "2", "--batch-mode", "rng"]


def _progress(out: Path) -> int:
    path = out / "progress_rank0.txt"
    lines = path.read_text().split() if path.is_file() else []
    return int(lines[-1]) if lines else 0


def _kill_at(out: Path, iteration: int, world: int) -> int:
    """Start the run, SIGKILL every rank once rank 0 has finished ``iteration`` steps; returns where it died."""
    procs = scale_launch.start(world, ["--out", str(out), *ARGS, "--sleep", "0.2"])
    deadline = time.monotonic() + 240
    while _progress(out) < iteration:
        if any(p.poll() is not None for p in procs):
            scale_launch.wait(procs)  # raises with the output if a worker failed
            raise AssertionError(f"run finished before reaching iteration {iteration}")
        if time.monotonic() > deadline:
            raise TimeoutError("worker did not make progress")
        time.sleep(0.02)
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    return _progress(out)


@pytest.mark.numerics
@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    world = 2
    reference = scale_launch.run(world, ["--out", str(tmp_path / "ref"), *ARGS])
    kill_at = random.Random().randint(3, STEPS - 2)  # arbitrary, but past the first checkpoint
    died_at = _kill_at(tmp_path / "run", kill_at, world)
    resumed = scale_launch.run(world, ["--out", str(tmp_path / "run"), *ARGS, "--resume"])
    start = int(resumed["start"])
    assert 2 <= start <= died_at and start % 2 == 0, (kill_at, died_at, start)
    message = f"killed after iteration {died_at}, resumed from checkpoint {start}"
    # the steps re-run after the restart see the same batches (RNG restored) and give the same losses
    assert torch.equal(resumed["losses"], reference["losses"][start:]), message
    for part in ("teacher", "student"):
        for key, value in reference[part].items():
            assert torch.equal(resumed[part][key], value), f"{part}.{key} differs ({message})"
    # no half-written checkpoint directory is ever visible under a final name
    names = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert "latest" in names and all(n == "latest" or n.startswith("iter_") for n in names)


# ------------------------------------------------------------------------- end to end: torchrun + loop

E2E_OVERRIDES = [
    "train.max_iterations=12",
    "train.checkpoint_every=2",
    "train.batch_size_per_gpu=8",
    "student.depth=2",
    "monitor.every=0",
    "evaluation.knn_at_end=false",
    "distributed.sharding_strategy=full_shard",
]


def _torchrun(output_dir: Path, data_dir: Path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env["PYTHONPATH"] = str(scale_launch.REPO)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={scale_launch.free_port()}",
        str(scale_launch.REPO / "launch" / "local.py"), "--config", "demo", "--output-dir", str(output_dir),
        *E2E_OVERRIDES,
    ]  # fmt: skip
    if data_dir.exists():  # share the digits shards built by the first run (same content, saves time)
        output_dir.mkdir(parents=True, exist_ok=True)
        if not (output_dir / "data").exists():
            (output_dir / "data").symlink_to(data_dir, target_is_directory=True)
    return subprocess.Popen(
        command, env=env, cwd=scale_launch.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so that kill -9 reaches torchrun's workers too
    )  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children first found, killed top-down in one sweep)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


@pytest.mark.slow
def test_torchrun_launch_local_survives_kill_9(tmp_path):
    import os

    from dinolite.checkpoint import load_consolidated_state_dict

    reference_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    proc = _torchrun(reference_dir, tmp_path / "none")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]

    proc = _torchrun(run_dir, reference_dir / "data")
    pointer = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 400
    while not (pointer.is_file() and pointer.read_text().strip() == "iter_00000002"):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no checkpoint at iteration 2"
        time.sleep(0.05)
    for pid in [proc.pid, *_descendants(proc.pid)]:  # torchrun's workers may sit in their own sessions
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    assert not (run_dir / "checkpoints" / "iter_00000012").exists()  # it really died before the end

    proc = _torchrun(run_dir, reference_dir / "data")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from" in out
    expected = load_consolidated_state_dict(reference_dir)
    resumed = load_consolidated_state_dict(run_dir)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
