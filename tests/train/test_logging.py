"""The metrics.jsonl schema (docs/logging.md), the console lines and the experiment trackers."""

from __future__ import annotations

import io
import json
import math
import os
import time

import pytest
import torch

from dinolite.config import load_config
from dinolite.train.logging import MetricLogger, get_console_logger, log_due
from dinolite.train.trackers import RUN_IDS_FILE, build_trackers

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
    console = get_console_logger(f"dinolite.test_logging.{id(stream)}", stream=stream)
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
        tmp_path, enabled=True, tensorboard=True, console=get_console_logger("dinolite.test_tb", io.StringIO())
    ) as log:
        log.log_summary(30, {"eval/knn_top1": 61.25}, "eval")
        log.log(30, {"loss": 2.5, "images_seen": 64.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/images_seen", "eval/knn_top1"}
    assert [(e.step, e.value) for e in events.Scalars("eval/knn_top1")] == [(30, 61.25)]


def test_wandb_offline_receives_every_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = load_config("demo", ["train.loggers=[wandb]", "train.wandb_project=dinolite-test"])
    trackers = build_trackers(cfg, tmp_path)
    with _logger(tmp_path, io.StringIO(), trackers=trackers) as log:
        log.log(1, {"loss": 3.0})
        log.log_summary(2, {"eval/knn_top1": 55.0}, "eval")
        log.log(2, {"loss": 2.0})
    run_id = json.loads((tmp_path / RUN_IDS_FILE).read_text())["wandb"]
    # wandb's service process writes the log; under load its last records land just after finish().
    for _ in range(60):
        history = [json.loads(line) for line in _wandb_history(tmp_path, run_id)]
        if len(history) >= 2:
            break
        time.sleep(0.5)
    assert [(h["_step"], h.get("train/loss"), h.get("eval/knn_top1")) for h in history] == [
        (1, 3.0, None),
        (2, 2.0, 55.0),
    ]


def _wandb_history(root, run_id) -> list[str]:
    """History rows of an offline run, decoded from its ``run-<id>.wandb`` transaction log.

    The file is wandb's leveldb-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records
    ``crc32 (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last) | data``) whose records
    are ``wandb_internal_pb2.Record`` protobufs. Recent wandb versions ship no Python reader for it.
    """
    from wandb.proto import wandb_internal_pb2

    (run_file,) = list(root.rglob(f"run-{run_id}.wandb"))
    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    block, offset, chunks, payloads = 32768, 7, [], []
    while offset + 7 <= len(raw):
        if block - offset % block < 7:  # no room for a record header: the block is padded
            offset += block - offset % block
            continue
        length, kind = int.from_bytes(raw[offset + 4 : offset + 6], "little"), raw[offset + 6]
        if kind == 0 and length == 0:
            break
        chunks.append(raw[offset + 7 : offset + 7 + length])
        offset += 7 + length
        if kind in (1, 4):
            payloads.append(b"".join(chunks))
            chunks = []
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append(json.dumps(row))
    return rows


def test_mlflow_local_file_receives_params_and_metrics_and_resumes_the_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = load_config("demo", ["train.loggers=[mlflow]"])
    with _logger(tmp_path, io.StringIO(), trackers=build_trackers(cfg, tmp_path)) as log:
        log.log(1, {"loss": 3.0, "images_seen": 64.0})
        log.log_summary(2, {"eval/knn_top1": 55.0}, "eval")
    resumed = build_trackers(cfg, tmp_path)  # same output_dir: the same MLflow run continues
    with _logger(tmp_path, io.StringIO(), trackers=resumed) as log:
        log.log(3, {"loss": 1.0})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads((tmp_path / RUN_IDS_FILE).read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.data.params["optim.base_lr"] == str(cfg.optim.base_lr)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 3.0), (3, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/knn_top1")] == [(2, 55.0)]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert not math.isnan(run.data.metrics["train/images_seen"])
    assert os.path.isfile(tmp_path / "mlflow.db")
