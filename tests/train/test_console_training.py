"""A real (tiny) training run: console lines, the metrics.jsonl schema, online evaluation, the watchdog.

The data stream is test_loop.py's deterministic stand-in (its ``train``); the online evaluation reads small labelled
image folders written here.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.train.batches import validate_training_config
from dinolite.train.logging import LOGGER_NAME
from tests.train.test_loop import tiny_config, train

# Every key a DINOv2 training record may hold (docs/logging.md); `grad_norm/...` and the collapse metrics
# are groups, checked by prefix.
TRAIN_KEYS = {
    "loss",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "last_layer_lr",
    "images_per_s",
    "data_wait",
    "memory_gb",
    "images_seen",
    "skipped_samples",
    "damaged_shards",
    "epoch",
    "loss_scale",
    "skipped_steps",
}
COUNTS = {"images_seen", "skipped_samples", "damaged_shards", "skipped_steps", "collapse/num_samples"}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Three classes of 16 px images with a red, green or blue cast: kNN separates them at once."""
    root = tmp_path_factory.mktemp("online")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root / "train", root / "val"


def _online(folders, every: int = 4) -> list[str]:
    train_dir, val_dir = folders
    return [
        f"evaluation.knn_train=[{train_dir}]",
        f"evaluation.knn_val=[{val_dir}]",
        f"evaluation.online_every={every}",
        "evaluation.knn_k=3",
    ]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _console(run) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        run()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_console_and_records_of_a_run_with_online_evaluation(tmp_path, folders):
    cfg = tiny_config(tmp_path, "train.log_every=3", "monitor.every=3", *_online(folders))
    lines = _console(lambda: train(cfg))
    stepped = [line for line in lines if line.startswith("it ")]
    # iteration 1 at once, then every log_every and the last (8); collapse every 3; eval every 4 and at 8
    assert [line.split()[1] for line in stepped if "/8" in line.split()[1]] == ["1/8", "3/8", "6/8", "8/8"]
    assert [line.split()[1] for line in stepped if " eval: " in line] == ["4", "8"]
    assert [line.split()[1] for line in stepped if " collapse: " in line] == ["3", "6"]
    assert all(len(line) <= 130 for line in stepped)  # one terminal line each

    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [1, 3, 4, 6, 8]  # one record per iteration that logged
    for record in records:
        extra = {k for k in record if "/" not in k} - TRAIN_KEYS - {"iteration", "time"}
        assert not extra, extra
        assert {k.split("/")[0] for k in record if "/" in k} <= {"grad_norm", "collapse", "eval"}
        for key in COUNTS & set(record):
            assert type(record[key]) is int, key
    assert {"eval/knn_top1"} <= set(records[2]) and records[2]["eval/knn_top1"] > 60.0  # colours: easy
    assert "eval/knn_top1" in records[4] and "loss" in records[4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/knn_top1")] == [4, 8]


def test_online_evaluation_leaves_training_bitwise_unchanged(tmp_path, folders):
    with_eval = train(tiny_config(tmp_path / "eval", *_online(folders, every=2)))
    without = train(tiny_config(tmp_path / "plain"))
    from dinolite.checkpoint import load_consolidated_state_dict

    a = load_consolidated_state_dict(with_eval.checkpoint_path, model="teacher", part="backbone")
    b = load_consolidated_state_dict(without.checkpoint_path, model="teacher", part="backbone")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_watchdog_can_stop_on_online_knn(tmp_path, folders):
    threshold = "monitor.thresholds=[{metric: eval/knn_top1, min: 101.0, max: null, after_iteration: 0, patience: 1}]"
    result = train(tiny_config(tmp_path, "monitor.action=stop", threshold, *_online(folders, every=4)))
    assert result.status == "stopped" and result.iteration == 4
    assert "eval/knn_top1" in result.message and "below min 101" in result.message


def test_online_evaluation_without_labelled_images_fails_at_start_up(tmp_path):
    from dinolite.config import ConfigError, load_config

    cfg = load_config(
        "demo", ["data.source=[/data/shards]", "evaluation.knn_at_end=false", "evaluation.online_every=50"]
    )
    with pytest.raises(ConfigError, match=r"'evaluation.online_every': 50, but evaluation.knn_train=\[\]"):
        validate_training_config(cfg)
    validate_training_config(
        load_config("demo", ["data.source=[/data/shards]", "evaluation.knn_at_end=false", "evaluation.online_every=0"])
    )
