"""The demo end to end: `launch/local.py` on scikit-learn's digits learns features, without collapse.

Trains the shipped ``configs/demo.yaml`` recipe (shortened via overrides to keep the test bounded), then
checks the kNN report against the random-init baseline and the collapse signals of the DINO head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from dinolite.commands.train import main  # noqa: E402
from dinolite.config import load_config  # noqa: E402

# The first half of the shipped demo: the schedules are the demo's own (stopping early rather than
# shrinking optim.epochs, which would compress warm-up, decay and the teacher momentum ramp).
SHORT = ["train.max_iterations=150", "train.checkpoint_every=1000", "monitor.every=25"]


@pytest.mark.slow
def test_demo_beats_random_init_and_does_not_collapse(tmp_path: Path):
    exit_code = main(["--output-dir", str(tmp_path), *SHORT])
    assert exit_code == 0
    cfg = load_config(tmp_path / "config.yaml")
    knn = json.loads((tmp_path / "knn.json").read_text())["top1"]
    assert set(knn) == {
        "raw_pixels",
        "random_init/cls",
        "random_init/avgpool",
        "random_init/cls+avgpool",
        "teacher/cls",
        "teacher/avgpool",
        "teacher/cls+avgpool",
    }
    assert knn["teacher/cls+avgpool"] >= knn["random_init/cls+avgpool"] + 10.0, knn
    assert knn["teacher/cls"] >= knn["random_init/cls+avgpool"] + 5.0, knn

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if "dino_loss" in r][-1]
    assert last_train["iteration"] == cfg.train.max_iterations == 150
    uniform = math.log(cfg.dino.head_n_prototypes)
    assert last_train["dino_loss"] < 0.8 * uniform, (last_train["dino_loss"], uniform)
    online = [r for r in records if "eval/knn_top1" in r]  # the demo evaluates online every 100 iterations
    assert [r["iteration"] for r in online] == [100]
    assert online[0]["eval/knn_top1"] > knn["random_init/cls"], (online, knn)
    last_collapse = [r for r in records if "collapse/teacher_mean_entropy_norm" in r][-1]
    # uniform head: every sample's and the batch-mean teacher distribution have entropy ln(K) (norm 1)
    assert last_collapse["collapse/teacher_mean_entropy_norm"] < 0.95, last_collapse
    assert last_collapse["collapse/teacher_entropy_norm"] < 0.6, last_collapse
