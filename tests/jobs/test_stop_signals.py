"""SIGTERM / SIGINT / SIGUSR2 on a local or torchrun run: checkpoint, exit 0, resume bitwise (issue 16, item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.jobs.stop_signals import StopFlag

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "train.max_iterations=10",
    "train.checkpoint_every=100",
    "train.log_every=1",
    "train.batch_size_per_gpu=8",
    "student.depth=2",
    "monitor.every=0",
    "evaluation.knn_at_end=false",
    "data.num_workers=0",
    "train.num_threads=1",
]


def _launch(output_dir: Path, data_dir: Path | None, nproc: int = 1, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    script = [
        str(REPO / "launch" / "local.py"),
        "--config",
        "demo",
        "--output-dir",
        str(output_dir),
        *OVERRIDES,
        *extra,
    ]
    if nproc > 1:
        port = 29500 + os.getpid() % 1000
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={port}",
            *script,
        ]
    else:
        command = [sys.executable, *script]
    if data_dir is not None:  # share the digits shards of the reference run (same content, saves time)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "data").symlink_to(data_dir, target_is_directory=True)
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a test can signal it whole, as a terminal does
    )


def _logged_iteration(output_dir: Path) -> int:
    path = output_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max([json.loads(line)["iteration"] for line in lines if line.strip()], default=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _launch(out, None)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return out


def _interrupt_and_resume(
    reference: Path,
    run: Path,
    signum: int,
    nproc: int = 1,
    target=None,
    launcher_rc: int = 0,
    extra: tuple[str, ...] = (),
    group: bool = False,
) -> str:
    proc = _launch(run, reference / "data", nproc, extra)
    deadline = time.monotonic() + 400
    while _logged_iteration(run) < 3:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signum)
    for pid in [] if group else target(proc) if target else [proc.pid]:
        os.kill(pid, signum)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == launcher_rc, log[-4000:]
    assert "run again to continue" in log, log[-4000:]
    stopped_at = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 3 <= stopped_at < 10, f"checkpoint at {stopped_at}"

    proc = _launch(run, None, nproc, extra)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    assert f"resumed from {run / 'checkpoints' / f'iter_{stopped_at:08d}'}" in log
    for model in ("teacher", "student"):
        expected = load_consolidated_state_dict(reference, model=model, part=None)
        resumed = load_consolidated_state_dict(run, model=model, part=None)
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.equal(resumed[key], expected[key]), f"{model}.{key} (stopped at {stopped_at})"
    return log


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2], ids=lambda s: s.name)
def test_local_run_checkpoints_on_signal_and_resumes_bitwise(reference, tmp_path, signum):
    _interrupt_and_resume(reference, tmp_path / "run", signum)


@pytest.mark.slow
def test_signal_to_the_whole_process_group_spares_the_data_workers(tmp_path):
    """Ctrl-C in a terminal or ``kill -TERM -<pgid>`` also reaches the DataLoader workers; they ignore it
    (torch's worker handler would re-raise SIGTERM and the dead worker would stop the run unsaved)."""
    workers = ("data.num_workers=2",)
    reference = tmp_path / "reference"
    proc = _launch(reference, None, extra=workers)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    log = _interrupt_and_resume(reference, tmp_path / "run", signal.SIGTERM, extra=workers, group=True)
    assert "killed by signal" not in log


def _workers(proc: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.fixture(scope="module")
def reference_2_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference2")
    proc = _launch(out, None, nproc=2)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return out


@pytest.mark.slow
def test_torchrun_workers_checkpoint_on_sigusr2_and_resume_bitwise(reference_2_ranks, tmp_path):
    """Two ranks; the signal reaches both workers (as Slurm delivers it to every process of the step)."""
    _interrupt_and_resume(reference_2_ranks, tmp_path / "run", signal.SIGUSR2, nproc=2, target=_workers)


@pytest.mark.slow
def test_sigterm_to_torchrun_is_forwarded_and_every_rank_checkpoints(reference_2_ranks, tmp_path):
    """torchrun forwards SIGTERM to its workers, which checkpoint and exit 0; torchrun itself then exits 1
    (its own SignalException, documented in docs/checkpoints.md). The resumed run is bitwise equal."""
    _interrupt_and_resume(reference_2_ranks, tmp_path / "run", signal.SIGTERM, nproc=2, launcher_rc=1)


def test_flag_records_the_first_signal_and_restores_handlers():
    flag = StopFlag()
    before = signal.getsignal(signal.SIGUSR2)
    with flag.installed():
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal neither aborts nor overwrites the first
        assert flag.is_set() and flag.signal_name == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before
