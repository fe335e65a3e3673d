"""Choosing a recipe from a matrix run on two data sets: the largest smallest gain over random init wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.commands.lab import main
from dinolite.config import ConfigError
from dinolite.io import write_json_atomic
from dinolite.lab.choose import SetResult, choose, read_set, render_choice
from dinolite.lab.evaluate import random_init_baseline_path
from dinolite.lab.matrix import BASELINES_FOLDER
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.traces import write_result

GRID = """\
name: grid
output_dir: {out}
iterations: 30
measurements: {{every: 10, spectra: 0, linear: false}}
runs:
  - {{label: paper, preset: small_simclr, expect: healthy}}
  - {{label: one-set, preset: small_simclr, overrides: [joint_embedding.temperature=0.2], expect: healthy}}
  - {{label: both, preset: small_simclr, overrides: ["crops.global_crops_scale=[0.6,1.0]"], expect: healthy}}
"""
LABELS = ["paper", "one-set", "both"]


def write_set(matrix: Path, folder: Path, knn: dict[str, float], random_init: float) -> None:
    """A finished run of the matrix on one set, as the lab leaves it: lab_result.json per run, the baseline."""
    plan = plan_matrix(matrix, folder, prepare=False)
    for run in plan.runs:
        if run.label in knn:
            write_result(run.run_dir, {"label": run.label, "status": "finished", "knn": {"top1": knn[run.label]}})
        base = random_init_baseline_path(run.config, folder / BASELINES_FOLDER, run.spec.features)
        write_json_atomic(base, {"knn": {"top1": random_init}})


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(out=tmp_path / "unused"))
    return path


def test_a_point_best_on_one_set_that_loses_on_the_other_is_not_chosen(matrix, tmp_path, capsys):
    # one-set: best on the digits (+30) but +5 on Fashion-MNIST; both: +20 / +14 (worst +14); paper: +15 / +11
    write_set(matrix, tmp_path / "digits", {"paper": 65.0, "one-set": 80.0, "both": 70.0}, random_init=50.0)
    write_set(matrix, tmp_path / "fmnist", {"paper": 69.0, "one-set": 63.0, "both": 72.0}, random_init=58.0)
    sets = [read_set(plan_matrix(matrix, tmp_path / d, prepare=False), d) for d in ("digits", "fmnist")]
    assert sets[0].knn == {"paper": 65.0, "one-set": 80.0, "both": 70.0}
    assert sets[1].random_init == dict.fromkeys(LABELS, 58.0)
    choice = choose(LABELS, sets)
    assert choice.chosen == "both"
    assert [choice.worst_gain(label) for label in LABELS] == [11.0, 5.0, 14.0]
    assert main(["--matrix", str(matrix), "--choose", f"digits={tmp_path / 'digits'}", str(tmp_path / "fmnist")]) == 0
    out = capsys.readouterr().out
    assert "| point | digits kNN | digits gain | fmnist kNN | fmnist gain | worst gain |" in out
    assert "| **both** (chosen) | 70.0 | +20.0 | 72.0 | +14.0 | +14.0 |" in out
    assert "| one-set | 80.0 | +30.0 | 63.0 | +5.0 | +5.0 |" in out
    assert "Random init kNN: digits 50.0; fmnist 58.0." in out and "Chosen: both (worst gain +14.0)." in out


def test_a_tie_goes_to_the_point_listed_first_the_papers(matrix, tmp_path):
    a = SetResult("a", {"paper": 70.0, "one-set": 70.5, "both": 60.0}, dict.fromkeys(LABELS, 50.0))
    b = SetResult("b", {"paper": 70.0, "one-set": 70.8, "both": 90.0}, dict.fromkeys(LABELS, 50.0))
    assert choose(LABELS, [a, b]).chosen == "paper"  # 20.0 against 20.5: within the 1-point margin
    assert choose(LABELS, [a, b], tie_margin=0.0).chosen == "one-set"


def test_a_point_not_run_on_every_set_is_shown_and_not_chosen(matrix, tmp_path):
    a = SetResult("a", {"paper": 60.0, "one-set": 90.0}, dict.fromkeys(LABELS, 50.0))
    b = SetResult("b", {"paper": 60.0}, dict.fromkeys(LABELS, 50.0))
    choice = choose(LABELS, [a, b])
    assert choice.chosen == "paper"
    assert "| one-set | 90.0 | +40.0 | not run | not run | not run |" in render_choice(choice)
    with pytest.raises(ConfigError, match=r"no grid point .* on every set: a: 0 of 3 finished; b: 0 of 3"):
        choose(LABELS, [SetResult("a", {}, {}), SetResult("b", {}, {})])
    with pytest.raises(ConfigError, match=r"--choose needs the matrix's runs on two or more data sets, got 1"):
        choose(LABELS, [a])


def test_choose_refuses_training_options_and_a_missing_folder(matrix, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--matrix", str(matrix), "--choose", "x", "y", "--data", "digits"])
    assert "--choose reads finished runs; it takes no --data" in capsys.readouterr().err
    assert main(["--matrix", str(matrix), "--choose", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert f"--choose {tmp_path / 'nope'}: no folder" in capsys.readouterr().err
