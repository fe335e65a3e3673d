"""dinolite/lab/runner.py: a run folder holds one experiment; a run is done when evaluated with its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dinolite.config import ConfigError, save_config
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.runner import check_run_dir, config_differences, is_done, iteration_of
from dinolite.lab.traces import write_result
from tests.lab.test_lab_end_to_end import tiny_matrix


def _with_train(config, **changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


@pytest.fixture
def run(tmp_path: Path):
    return plan_matrix(tiny_matrix(tmp_path), prepare=False).runs[0]


def test_an_empty_folder_differs_in_nothing_and_is_not_done(run) -> None:
    assert config_differences(run) == [] and not is_done(run)
    check_run_dir(run)


def test_a_folder_of_another_config_is_refused_naming_the_keys(run) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.config, run.run_dir / "config.yaml")
    assert config_differences(run) == []
    save_config(_with_train(run.config, seed=run.config.train.seed + 1), run.run_dir / "config.yaml")
    assert config_differences(run) == [f"train.seed: {run.config.train.seed + 1!r} -> {run.config.train.seed!r}"]
    with pytest.raises(ConfigError, match=rf"run {run.label!r}: .* holds a run with a different config \(train.seed"):
        check_run_dir(run)


def test_a_moved_lab_folder_is_no_difference(run) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(_with_train(run.config, output_dir="/elsewhere"), run.run_dir / "config.yaml")
    assert config_differences(run) == []


def test_done_means_a_final_result_with_the_planned_config(run) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.config, run.run_dir / "config.yaml")
    write_result(run.run_dir, {"status": "running"})
    assert not is_done(run)
    write_result(run.run_dir, {"status": "finished"})
    assert is_done(run)


@pytest.mark.parametrize(
    "message, iteration",
    [("non-finite loss at iteration 17 (on this rank): loss=nan", 17), ("at iteration 5, x", 5), ("no number", -1)],
)
def test_the_iteration_of_a_divergence_message(message: str, iteration: int) -> None:
    assert iteration_of(message) == iteration
