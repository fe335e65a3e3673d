"""dinolite/train/methods/msn.py: its switches reach the loss, and its watchdog rules."""

from __future__ import annotations

import pytest

from dinolite.config import load_config
from dinolite.monitor.collapse import metric_names
from dinolite.monitor.watchdog import Watchdog
from dinolite.train.methods import get_method
from tests.train.methods.test_masked_methods import TINY, _batch, _step


def test_msn_switches_reach_the_loss_and_anchors_are_patch_dropped():
    _, _, objective, out = _step("msn", ["msn.sharpen=false", "msn.me_max=false"])
    assert objective.loss.sharpen_temperature == 1.0 and objective.loss.me_max_weight == 0.0
    assert float(out.terms["me_max"]) == 0.0
    cfg = load_config("demo_msn", TINY)
    batch = _batch(cfg, get_method("msn"))
    assert batch["anchor_keep"].shape == (4, round(0.85 * 64)) and batch["focal_keep"].shape == (8, round(0.85 * 16))
    heavy = get_method("msn").training_flops(load_config("demo_msn", [*TINY, "msn.mask_ratio=0.5"]))
    assert heavy["flops_student_per_image"] < get_method("msn").training_flops(cfg)["flops_student_per_image"]


@pytest.mark.parametrize(
    "run, flagged",
    [
        # (batch-mean entropy / ln K, per-sample entropy / ln K) at iterations 30..120 of the digits demo runs
        # recorded in docs/methods_masked.md. The demo preset (Sinkhorn targets), healthy:
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.72, 0.82, 0.80, 0.74]}, None),
        # msn.me_max=false: Sinkhorn alone keeps the batch balanced, no collapse
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.74, 0.82, 0.79, 0.71]}, None),
        # msn.me_max=false msn.use_sinkhorn=false: the whole batch on one prototype
        (
            {"mean": [0.13, 0.00, 0.00, 0.00], "per_sample": [0.05, 0.00, 0.00, 0.00]},
            "collapse/teacher_mean_entropy_norm",
        ),
        # msn.sharpen=false: uniform targets
        ({"mean": [1.00, 1.00, 1.00, 1.00], "per_sample": [0.98, 1.00, 1.00, 1.00]}, "collapse/teacher_entropy_norm"),
        # the earlier preset (no Sinkhorn, EMA 0.98 -> 1, no colour jitter): healthy, without ME-MAX, unsharpened
        ({"mean": [0.39, 0.32, 0.32, 0.32], "per_sample": [0.11, 0.09, 0.06, 0.04]}, None),
        (
            {"mean": [0.34, 0.22, 0.19, 0.17], "per_sample": [0.08, 0.05, 0.03, 0.03]},
            "collapse/teacher_mean_entropy_norm",
        ),
        ({"mean": [0.99, 1.00, 1.00, 1.00], "per_sample": [0.93, 0.98, 0.98, 0.99]}, "collapse/teacher_entropy_norm"),
    ],
)
def test_msn_watchdog_rules_separate_the_measured_healthy_and_collapsed_runs(run, flagged):
    spec = get_method("msn")
    watchdog = Watchdog(
        list(spec.watchdog_thresholds), action="warn", known_metrics=metric_names(spec.monitor_embeddings)
    )
    fired = set()
    for i, (mean, per_sample) in enumerate(zip(run["mean"], run["per_sample"])):
        metrics = {"collapse/teacher_mean_entropy_norm": mean, "collapse/teacher_entropy_norm": per_sample}
        fired |= {alert.metric for alert in watchdog.check(30 * (i + 1), metrics)}
    assert fired == ({flagged} if flagged else set())
