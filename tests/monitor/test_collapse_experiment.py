"""The documented collapse experiment (docs/monitor.md) through the real training loop.

A tiny DINOv2 on scikit-learn's digits, default watchdog thresholds with ``monitor.action=stop``:
- healthy (the demo recipe): runs to the end, never flagged;
- no centering (``teacher.center_momentum=1.0`` keeps the centre at its initial 0) and no teacher EMA
  (``momentum_teacher=0``): the sharpened teacher puts the whole batch on one prototype within a few
  iterations, and the one-hot rule (``collapse/teacher_mean_entropy < 0.3``) stops the run.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

TINY = [
    "student.embed_dim=32",
    "student.depth=2",
    "student.num_heads=2",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "dino.head_n_prototypes=64",
    "dino.head_bottleneck_dim=32",
    "dino.head_hidden_dim=64",
    "ibot.head_n_prototypes=64",
    "ibot.head_bottleneck_dim=32",
    "ibot.head_hidden_dim=64",
    "train.batch_size_per_gpu=8",
    "train.iterations_per_epoch=10",
    "optim.epochs=10",
    "optim.warmup_epochs=1",
    "train.checkpoint_every=10",
    "train.device=cpu",
    "data.num_workers=0",
    "evaluation.knn_at_end=false",
    "monitor.every=2",
    "monitor.action=stop",
]
NO_CENTERING = ["teacher.center_momentum=1.0", "teacher.momentum_teacher=0.0", "teacher.final_momentum_teacher=0.0"]
ITERATIONS = 26


def _train(tmp_path: Path, name: str, overrides: list[str]):
    from dinolite.config import load_config
    from dinolite.distributed import init_distributed
    from dinolite.train.loop import train

    cfg = load_config("demo", TINY + [f"train.max_iterations={ITERATIONS}"] + overrides)
    result = train(cfg, tmp_path / name, init_distributed("gloo", "cpu", environ={}))
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    collapse = [r for r in records if "collapse/teacher_mean_entropy" in r]
    return result, collapse


@pytest.mark.slow
def test_healthy_run_is_not_flagged_and_no_centering_is_stopped(tmp_path):
    healthy, healthy_log = _train(tmp_path, "healthy", [])
    assert healthy.status == "finished" and healthy.iteration == ITERATIONS
    assert len(healthy_log) == ITERATIONS // 2
    # Well clear of the one-hot rule's 0.3 nats (at 8 samples per batch the ceiling is ln 8 = 2.08).
    assert min(r["collapse/teacher_mean_entropy"] for r in healthy_log if r["iteration"] >= 20) > 2 * 0.3

    collapsed, collapsed_log = _train(tmp_path, "no_centering", NO_CENTERING)
    assert collapsed.status == "stopped"
    # after_iteration 20, patience 3, measured every 2: the third flagged measurement is iteration 24.
    assert collapsed.iteration == 24
    assert "collapse/teacher_mean_entropy" in collapsed.message
    assert "below min 0.3" in collapsed.message and "iteration 24" in collapsed.message
    assert collapsed_log[-1]["collapse/teacher_mean_entropy"] < 0.3
    # The last good checkpoint (iteration 20, before the collapse was confirmed) is kept.
    assert collapsed.checkpoint_path is not None and "20" in Path(collapsed.checkpoint_path).name
