"""The metrics.jsonl schema (docs/logging.md) and the console lines (trackers: tests/jobs/test_trackers.py)."""

from __future__ import annotations

import io
import json

import torch

from dinolite.jobs.console import configure_console
from dinolite.train.logging import MetricLogger, log_due

TRAIN = {
    "loss": torch.tensor(9.125),
    "dino_loss": 3.5,
    "ibot_loss": 5.625,
    "koleo_loss": -0.0124,
    "lr": 1e-3,
    "wd": 0.04,
    "momentum": 0.98,
    "teacher_temp": 0.02,
    "last_layer_lr": 0.0,
    "images_per_s": 312.4,
    "data_wait": 0.05,
    "memory_gb": 0.0,
    "images_seen": 1920.0,
    "skipped_samples": 0.0,
    "epoch": 1.0,
    "grad_norm/backbone": 1.25,
}
COLLAPSE = {
    "collapse/num_samples": 64.0,
    "collapse/backbone_std": 0.05,
    "collapse/backbone_std_ratio": 0.49,
    "collapse/backbone_rankme": 21.4,
    "collapse/backbone_rankme_ratio": 0.334,
    "collapse/head_rankme": 12.0,
    "collapse/teacher_entropy": 1.0,
    "collapse/teacher_entropy_norm": 0.29,
    "collapse/teacher_mean_entropy": 3.3,
    "collapse/teacher_mean_entropy_norm": 0.95,
    "collapse/student_teacher_ce": 1.4,
    "collapse/student_teacher_kl": 0.47,
}


def _logger(path, stream, **kwargs) -> MetricLogger:
    console = configure_console(f"dinolite.test_logging.{id(stream)}", stream=stream)
    return MetricLogger(path, enabled=True, tensorboard=False, console=console, **kwargs)


def test_one_record_per_iteration_with_the_documented_schema(tmp_path):
    stream = io.StringIO()
    with _logger(tmp_path / "run", stream) as log:
        log.log(1, TRAIN, total_iterations=300, eta_seconds=95)
        log.log_summary(30, COLLAPSE, "collapse")
        log.log_summary(30, {"eval/knn_top1": 61.25}, "eval")
        log.log(30, TRAIN, total_iterations=300, eta_seconds=65)
        log.log_summary(45, {"eval/knn_top1": 70.0}, "eval")  # not a log step: written at close
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 30, 45]
    first, merged, last = records
    # The pinned schema: iteration (int) and time (float) always; training metrics unprefixed; every
    # other group prefixed; counts as integers; nothing else.
    expected_train = {k: (int(v) if k in ("images_seen", "skipped_samples") else float(v)) for k, v in TRAIN.items()}
    assert set(first) == {"iteration", "time", *TRAIN}
    assert {k: first[k] for k in TRAIN} == expected_train
    assert type(first["iteration"]) is int and type(first["time"]) is float
    assert type(first["images_seen"]) is int and type(first["skipped_samples"]) is int
    assert set(merged) == {"iteration", "time", *TRAIN, *COLLAPSE, "eval/knn_top1"}
    assert type(merged["collapse/num_samples"]) is int and merged["collapse/num_samples"] == 64
    assert merged["eval/knn_top1"] == 61.25
    assert set(last) == {"iteration", "time", "eval/knn_top1"}
    for record in records:
        assert all("/" in k or k in TRAIN or k in ("iteration", "time") for k in record)


def test_console_is_one_compact_line_per_log_step_and_key_figures_per_group(tmp_path):
    stream = io.StringIO()
    with _logger(tmp_path / "run", stream) as log:
        log.log_summary(30, COLLAPSE, "collapse")
        log.log_summary(30, {"eval/knn_top1": 61.25, "eval/linear_top1": 70.5}, "eval")
        log.log(30, TRAIN, total_iterations=300, eta_seconds=3725)
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]  # drop the time stamp
    collapse, evaluation, train = lines
    assert collapse == (
        "it 30 collapse: rankme 21.4 (33% of max)  std*sqrt(D) 0.49  teacher H/lnK 0.29  batch H/lnK 0.95  KL 0.470"
    )
    assert evaluation == "it 30 eval: knn top-1 61.2%  linear top-1 70.5%"
    assert train == "it 30/300  loss 9.12 (dino 3.50 ibot 5.62 koleo -0.012)  lr 1.0e-03  312 img/s  eta 1:02:05"
    assert all(len(line) <= 120 for line in lines)  # fits a terminal line


def test_console_shows_counts_as_integers_and_problems_only_when_present(tmp_path):
    stream = io.StringIO()
    with _logger(tmp_path / "run", stream) as log:
        log.log(60, {**TRAIN, "skipped_samples": 3.0, "data_wait": 0.45, "memory_gb": 11.25})
    line = stream.getvalue()
    assert "skipped 3\n" in line and "data wait 45%" in line and "GB" not in line  # memory: JSONL only


def test_first_iteration_and_the_last_are_always_logged():
    assert [i for i in range(1, 101) if log_due(i, every=30, last=100)] == [1, 30, 60, 90, 100]
    assert [i for i in range(1, 6) if log_due(i, every=30, last=5)] == [1, 5]  # max_iterations < log_every


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricLogger(tmp_path / "other", enabled=False) as log:
        log.log(10, {"loss": 1.0})
        log.log_summary(10, {"eval/knn_top1": 1.0}, "eval")
    assert not (tmp_path / "other").exists()


def test_tensorboard_gets_the_same_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricLogger(
        tmp_path, enabled=True, tensorboard=True, console=configure_console("dinolite.test_tb", io.StringIO())
    ) as log:
        log.log_summary(30, {"eval/knn_top1": 61.25}, "eval")
        log.log(30, {"loss": 2.5, "images_seen": 64.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/images_seen", "eval/knn_top1"}
    assert [(e.step, e.value) for e in events.Scalars("eval/knn_top1")] == [(30, 61.25)]
