"""Experiment trackers (train.loggers): wandb and MLflow receive every metrics.jsonl record."""

from __future__ import annotations

import io
import json
import math
import os
import time

import pytest

from dinolite.config import load_config
from dinolite.jobs.trackers import RUN_IDS_FILE, build_trackers
from tests.train.test_logging import _logger


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
