"""A tiny matrix (2 runs, 6 iterations) through ``launch/lab.py``: training, evaluation, verdicts, the
report with its figures; a second call skips finished runs; an interrupted run resumes and ends exactly
where the uninterrupted one does; ``--slurm --dry-run`` prints the job array."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dinolite.commands.lab import main
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.runner import run_local
from dinolite.lab.traces import read_result, read_trace
from dinolite.train.loop import train
from dinolite.train.run import RunHooks

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 6
TINY = """\
name: tiny
description: two tiny runs
output_dir: {out}
iterations: {iterations}
overrides: [student.embed_dim=32, student.depth=2, student.num_heads=2, crops.global_crops_size=16,
            crops.local_crops_size=8, crops.local_crops_number=2, train.batch_size_per_gpu=16,
            dino.head_n_prototypes=64, ibot.head_n_prototypes=64, data.shuffle_buffer=100, data.num_workers=0]
measurements: {{every: 2, max_samples: 64, spectra: 2, spectrum_samples: 256, linear_epochs: 1}}
runs:
  - {{label: dino, preset: demo, expect: healthy}}
  - label: dino-no-centering
    preset: demo
    overrides: [teacher.center_momentum=1.0, teacher.momentum_teacher=0.0, teacher.final_momentum_teacher=0.0]
    expect: complete collapse
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_matrix(tmp_path: Path, name: str = "tiny.yaml", out: str = "lab") -> Path:
    path = tmp_path / name
    path.write_text(TINY.format(out=tmp_path / out, iterations=ITERATIONS))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lab")
    assert main(["--matrix", str(tiny_matrix(tmp))]) == 0
    return tmp


@pytest.mark.slow
def test_tiny_matrix_trains_evaluates_and_reports(lab):
    out = lab / "lab"
    for label in ("dino", "dino-no-centering"):
        result = read_result(out / label)
        assert result["status"] == "finished" and result["iteration"] == ITERATIONS
        assert 0 <= result["knn"]["top1"] <= 100 and 0 <= result["linear"]["top1"] <= 100
        # one spectrum per kept checkpoint (every 3 iterations), on 256 images of a 32-wide CLS
        assert [s["iteration"] for s in result["spectra"]] == [3, 6]
        assert all(s["num_samples"] == 256 and len(s["eigenvalues"]) == 32 for s in result["spectra"])
        trace = read_trace(out / label)
        assert trace.channel("backbone", "std_ratio").iterations == [2, 4, 6]
        assert trace.loss().iterations == [1, 2, 4, 6]  # iteration 1 is always logged
    baseline = json.loads(next((out / "baselines").glob("random_init_*.json")).read_text())
    assert baseline["spectrum"]["iteration"] == 0 and "knn" in baseline and "linear" in baseline

    page = (out / "report" / "README.md").read_text()
    for figure in ("std.png", "spectra.png", "rankme.png", "teacher.png", "loss.png"):
        assert f"]({figure})" in page
        data = (out / "report" / figure).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, figure
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    # without centering and EMA the teacher puts the batch on one prototype within a few steps
    collapsed = rows["`dino-no-centering`"]
    assert "| complete collapse | complete collapse (one prototype" in collapsed and "| **yes** |" in collapsed
    assert "H(mean teacher)/ln K < 0.1" in collapsed
    assert "`dino`" in rows  # 6 iterations are too few for a healthy verdict; the row is there either way
    assert "2 of 2 runs done" in page


@pytest.mark.slow
def test_second_call_skips_finished_runs(lab, caplog):
    before = {p: p.read_bytes() for p in (lab / "lab").glob("*/metrics.jsonl")}
    with caplog.at_level("INFO", logger="dinolite.train"):
        assert main(["--matrix", str(lab / "tiny.yaml")]) == 0
    assert caplog.text.count("finished earlier, skipped") == 2
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.slow
def test_interrupted_run_resumes_and_equals_the_uninterrupted_one(lab, tmp_path):
    plan = plan_matrix(tiny_matrix(tmp_path, out="interrupted"))
    calls = {"n": 0}

    def interrupted_train(cfg, output_dir, env, stop_requested=None):
        def stop_after_three() -> bool:
            calls["n"] += 1
            return calls["n"] >= 3

        return train(cfg, output_dir, env, hooks=RunHooks(stop_requested=stop_after_three))

    assert run_local(plan, ["dino"], train_fn=interrupted_train) is None  # preempted: no report yet
    assert read_result(plan.runs[0].run_dir) is None
    assert read_trace(plan.runs[0].run_dir).last_iteration == 3 - 1  # logged at 2, stopped at 3
    run_local(plan, ["dino"], report=False)
    resumed, uninterrupted = read_trace(tmp_path / "interrupted" / "dino"), read_trace(lab / "lab" / "dino")
    assert read_result(tmp_path / "interrupted" / "dino")["iteration"] == ITERATIONS
    # Collapse metrics at every measurement, and the whole training record of iteration 6, bit for bit.
    # (The loss logged at 4 averages iterations 3-4 uninterrupted but only 4 after the resume at 3.)
    assert [it for it, _ in resumed.collapse_records()] == [2, 4, 6]
    assert resumed.collapse_records() == uninterrupted.collapse_records()
    timing = ("time", "images_per_s", "data_wait", "memory_gb")
    final = [{k: v for k, v in t.records[ITERATIONS].items() if k not in timing} for t in (resumed, uninterrupted)]
    assert final[0] == final[1] and "loss" in final[0]


def test_slurm_dry_run_prints_one_array_for_the_unfinished_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "lab.py"),
            "--matrix",
            str(tiny_matrix(tmp_path)),
            "--slurm",
            "--gpus-per-node",
            "0",
            "--cpus-per-task",
            "1",
            "--time",
            "15",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0-1%2" in proc.stdout  # 2 runs: an array of 2, both may run at once
    assert "#SBATCH --job-name=dinolite-lab-tiny" in proc.stdout
    assert "#SBATCH --cpus-per-task=1" in proc.stdout and "#SBATCH --time=15" in proc.stdout
    for label in ("dino", "dino-no-centering"):
        assert f"# array task: {label}: demo" in proc.stdout
    assert not (tmp_path / "lab").exists()  # a dry run writes nothing


def test_options_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--matrix", str(tiny_matrix(tmp_path)), "--nodes", "2"])  # a Slurm option without --slurm
    assert "--nodes only apply with --slurm" in capsys.readouterr().err
    assert main(["--matrix", str(tmp_path / "missing.yaml")]) == 2
    assert "matrix file not found" in capsys.readouterr().err
    assert main(["--matrix", str(tiny_matrix(tmp_path)), "--only", "dino-no-centring", "--report"]) == 2
    assert "did you mean 'dino-no-centering'?" in capsys.readouterr().err


def test_data_reaches_the_report_and_the_slurm_array_and_a_bad_set_is_named(tmp_path, monkeypatch, capsys):
    from dinolite.data.fashion_mnist import DIR_ENV
    from tests.data.fashion_idx import synthetic_splits, write_idx_set

    monkeypatch.setenv(DIR_ENV, str(write_idx_set(tmp_path / "idx", synthetic_splits(train=8, val=4))))
    matrix = str(tiny_matrix(tmp_path))
    assert main(["--matrix", matrix, "--data", "fashion-mnst"]) == 2
    err = capsys.readouterr().err
    assert "--data 'fashion-mnst' is not a built-in data set; did you mean 'fashion_mnist'?" in err
    assert "digits, fashion_mnist" in err and not list(tmp_path.glob("lab*"))
    assert main(["--matrix", matrix, "--data", "fashion_mnist", "--report"]) == 0
    page = (tmp_path / "lab-fashion_mnist" / "report" / "README.md").read_text()
    assert "(data fashion_mnist, given with --data in place of the matrix's digits;" in page
    assert not (tmp_path / "lab").exists()  # the matrix's own (digits) folder is untouched
    pytest.importorskip("submitit")
    argv = ["--slurm", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "15", "--dry-run"]
    assert main(["--matrix", matrix, "--data", "fashion_mnist", *argv]) == 0
    out = capsys.readouterr().out
    for label in ("dino", "dino-no-centering"):
        assert f"-> {tmp_path / 'lab-fashion_mnist' / label}" in out
