"""dinolite/lab/traces.py: a run's metric log read back as series, its result file, its watchdog replayed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinolite.config import load_config
from dinolite.lab.traces import (
    RunTrace,
    finite,
    read_result,
    read_run_config,
    read_trace,
    replay_watchdog,
    write_result,
)


def _write_log(run_dir: Path, records: list[dict], torn_tail: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + torn_tail
    (run_dir / "metrics.jsonl").write_text(text)


def test_a_resumed_runs_later_records_win_and_iterations_are_sorted(tmp_path: Path) -> None:
    _write_log(
        tmp_path,
        [{"iteration": 20, "loss": 2.0}, {"iteration": 10, "loss": 3.0}, {"iteration": 20, "loss": 1.5, "lr": 0.1}],
    )
    trace = read_trace(tmp_path)
    assert list(trace.records) == [10, 20] and trace.records[20] == {"loss": 1.5, "lr": 0.1}
    assert trace.loss().iterations == [10, 20] and trace.loss().last == 1.5 and trace.last_iteration == 20


def test_a_torn_last_line_is_ignored_and_a_bad_line_inside_is_named(tmp_path: Path) -> None:
    _write_log(tmp_path, [{"iteration": 1, "loss": 1.0}], torn_tail='{"iteration": 2, "lo')
    assert list(read_trace(tmp_path).records) == [1]
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n{"iteration": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_trace(tmp_path)
    assert read_trace(tmp_path / "not_started").records == {}


def test_a_channel_resolves_to_the_first_prefix_the_run_logged() -> None:
    trace = RunTrace.from_records(
        [{"iteration": 5, "collapse/student_backbone_std": 0.2, "collapse/student_backbone_rankme": 3.0}]
    )
    assert trace.channel_prefix("backbone") == "collapse/student_backbone"
    assert trace.channel("backbone", "rankme").values == [3.0]
    assert trace.channel_prefix("predictor") is None and not trace.channel("predictor", "std")


def test_collapse_records_are_the_monitors_measurements_only() -> None:
    trace = RunTrace.from_records(
        [
            {"iteration": 1, "loss": 1.0},
            {"iteration": 2, "collapse/num_samples": 8, "collapse/backbone_std": 0.1, "loss": 0.9},
        ]
    )
    assert trace.collapse_records() == [(2, {"collapse/num_samples": 8, "collapse/backbone_std": 0.1})]


def test_results_round_trip_and_are_absent_before_written(tmp_path: Path) -> None:
    assert read_result(tmp_path) is None
    write_result(tmp_path, {"knn": 0.9})
    assert read_result(tmp_path) == {"knn": 0.9}


def test_the_run_config_is_read_back_or_absent(tmp_path: Path) -> None:
    assert read_run_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("train:\n  seed: 5\n")
    assert read_run_config(tmp_path).train.seed == 5


@pytest.mark.parametrize(
    "value, expected", [(1.0, True), (0, True), (None, False), (float("nan"), False), ("1", False)]
)
def test_finite(value: object, expected: bool) -> None:
    assert finite(value) is expected  # type: ignore[arg-type]


def test_a_watchdog_replay_without_measurements_never_fires() -> None:
    replay = replay_watchdog(load_config("demo"), RunTrace())
    assert (replay.fired_at, replay.message) == (None, "never fired")
