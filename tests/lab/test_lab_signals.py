"""SIGTERM / SIGINT / SIGUSR2 to a local lab (issue 24, item 7): the run in progress is checkpointed (or
its evaluation ends), the lab says the same command resumes and exits 0, as ``dinolite-train`` does."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinolite.checkpoint import CheckpointManager
from dinolite.jobs.console import configure_console
from dinolite.jobs.stop_signals import StopFlag
from dinolite.lab import runner
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.traces import read_result
from dinolite.train.loop import TrainResult

ROOT = Path(__file__).resolve().parents[2]
MATRIX = """\
name: stop
output_dir: {out}
iterations: {iterations}
overrides: [student.embed_dim=32, student.depth=2, student.num_heads=2, crops.global_crops_size=16,
            crops.local_crops_size=8, crops.local_crops_number=2, train.batch_size_per_gpu=16,
            dino.head_n_prototypes=64, ibot.head_n_prototypes=64, data.shuffle_buffer=100, data.num_workers=0,
            train.num_threads=1]
measurements: {{every: 2, max_samples: 32, spectra: 1, spectrum_samples: 64, linear: false}}
runs:
  - {{label: first, preset: demo, expect: healthy}}
  - {{label: second, preset: demo, expect: healthy}}
"""


def _matrix(tmp_path: Path, iterations: int) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(out=tmp_path / "lab", iterations=iterations))
    return path


def _logged_iteration(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max([json.loads(line).get("iteration", 0) for line in lines[:-1]], default=0)  # the last may be torn


@pytest.mark.slow
def test_sigterm_checkpoints_the_run_in_progress_and_the_same_command_resumes(tmp_path):
    command = [sys.executable, str(ROOT / "launch" / "lab.py"), "--matrix", str(_matrix(tmp_path, 100000))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lab = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    run_dir = tmp_path / "lab" / "first"
    deadline = time.monotonic() + 300
    while _logged_iteration(run_dir) < 4:
        assert lab.poll() is None, lab.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the lab did not start training"
        time.sleep(0.05)
    lab.send_signal(signal.SIGTERM)
    log, _ = lab.communicate(timeout=300)
    assert lab.returncode == 0, log[-3000:]
    assert "caught SIGTERM" in log and "run the same command again to resume" in log, log[-3000:]
    latest = CheckpointManager(run_dir).latest()
    assert latest is not None and _logged_iteration(run_dir) >= 4, log[-3000:]
    assert read_result(run_dir) is None and not (tmp_path / "lab" / "second").exists()
    print(f"lab started, trained 4 iterations and stopped in {time.monotonic() - started:.0f} s")
    # That the same command then resumes from this checkpoint: test_lab_end_to_end.py (interrupted run).


def test_a_signal_during_an_evaluation_ends_it_and_nothing_else_starts(tmp_path, monkeypatch):
    plan = plan_matrix(_matrix(tmp_path, 10), prepare=False)
    trained = []

    def pretend_training(cfg, output_dir, env, stop_requested=None):
        trained.append(output_dir.name)
        return TrainResult("finished", 10, None)

    def evaluation_that_gets_a_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once
        raise AssertionError("the evaluation was not interrupted")

    monkeypatch.setattr(runner, "evaluate_run", evaluation_that_gets_a_sigterm)
    stop = StopFlag(prefix="[lab]")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    console = configure_console()
    console.addHandler(handler)
    try:
        with stop.installed():
            start = time.monotonic()
            assert runner.run_local(plan, train_fn=pretend_training, stop=stop) is None
    finally:
        console.removeHandler(handler)
    assert time.monotonic() - start < 20 and trained == ["first"]
    log = "\n".join(messages)
    assert "first: stopped by SIGTERM during its evaluation" in log and "run the same command again to resume" in log
    assert read_result(plan.runs[0].run_dir) is None and stop.signal_name == "SIGTERM"
