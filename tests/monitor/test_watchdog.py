"""Watchdog rules: min/max, NaN, after_iteration, patience, warn vs stop, config round trip."""

import logging
import math

import pytest

from dinolite.config import WatchdogThreshold, load_config
from dinolite.monitor.watchdog import CollapseDetected, Watchdog
from dinolite.train.methods.dinov2 import WATCHDOG_THRESHOLDS


def _rankme_min(**kwargs) -> WatchdogThreshold:
    return WatchdogThreshold(metric="collapse/backbone_rankme", min=2.0, **kwargs)


def test_warn_logs_and_returns_alert(caplog):
    watchdog = Watchdog([_rankme_min()], action="warn")
    with caplog.at_level(logging.WARNING):
        alerts = watchdog.check(100, {"collapse/backbone_rankme": 1.2})
    assert len(alerts) == 1
    assert alerts[0].metric == "collapse/backbone_rankme" and alerts[0].value == 1.2
    assert alerts[0].bound == "min" and alerts[0].threshold == 2.0 and alerts[0].iteration == 100
    assert "collapse/backbone_rankme = 1.2 at iteration 100" in caplog.text
    assert "below min 2" in caplog.text


def test_healthy_value_gives_no_alert():
    watchdog = Watchdog([_rankme_min()], action="stop")
    assert watchdog.check(100, {"collapse/backbone_rankme": 30.0}) == []


def test_stop_raises_with_metric_value_threshold_and_iteration():
    watchdog = Watchdog([WatchdogThreshold(metric="collapse/teacher_entropy_norm", max=0.99)], action="stop")
    with pytest.raises(CollapseDetected) as info:
        watchdog.check(340, {"collapse/teacher_entropy_norm": 0.9991})
    message = str(info.value)
    assert "collapse/teacher_entropy_norm" in message
    assert "0.9991" in message
    assert "above max 0.99" in message
    assert "iteration 340" in message
    assert info.value.alerts[0].bound == "max"


def test_patience_needs_consecutive_flags_and_resets():
    watchdog = Watchdog([_rankme_min(patience=3)], action="stop")
    low, high = {"collapse/backbone_rankme": 1.0}, {"collapse/backbone_rankme": 10.0}
    assert watchdog.check(10, low) == []
    assert watchdog.check(20, low) == []
    assert watchdog.check(30, high) == []  # resets the count
    assert watchdog.check(40, low) == []
    assert watchdog.check(50, low) == []
    with pytest.raises(CollapseDetected, match="flagged 3 measurement"):
        watchdog.check(60, low)


def test_after_iteration_ignores_warmup():
    watchdog = Watchdog([_rankme_min(after_iteration=500)], action="stop")
    assert watchdog.check(0, {"collapse/backbone_rankme": 1.0}) == []
    assert watchdog.check(499, {"collapse/backbone_rankme": 1.0}) == []
    with pytest.raises(CollapseDetected, match="iteration 500"):
        watchdog.check(500, {"collapse/backbone_rankme": 1.0})


def test_nan_is_always_flagged():
    watchdog = Watchdog([_rankme_min()], action="warn")
    alerts = watchdog.check(7, {"collapse/backbone_rankme": math.nan})
    assert alerts[0].bound == "finite"
    assert "must be finite" in alerts[0].message()


def test_absent_metric_is_skipped_and_keeps_the_count():
    watchdog = Watchdog([_rankme_min(patience=2)], action="stop")
    assert watchdog.check(10, {"collapse/backbone_rankme": 1.0}) == []
    assert watchdog.check(11, {"loss/total": 3.0}) == []  # not a measurement iteration
    with pytest.raises(CollapseDetected):
        watchdog.check(20, {"collapse/backbone_rankme": 1.0})


def test_unknown_monitor_metric_is_named_with_the_nearest():
    with pytest.raises(
        ValueError, match=r"thresholds\[0\].metric 'collapse/backbone_rankmee'.*'collapse/backbone_rankme'"
    ):
        Watchdog([WatchdogThreshold(metric="collapse/backbone_rankmee", min=1.0)])
    # Other metric families (e.g. the trainer's losses) are not the monitor's to police.
    Watchdog([WatchdogThreshold(metric="loss/total", max=100.0)])


def test_invalid_settings_name_the_threshold():
    with pytest.raises(ValueError, match="monitor.action"):
        Watchdog([], action="explode")
    with pytest.raises(ValueError, match=r"thresholds\[0\].*patience"):
        Watchdog([_rankme_min(patience=0)])
    with pytest.raises(ValueError, match=r"thresholds\[0\].*min 3.0 > max 1.0"):
        Watchdog([WatchdogThreshold(metric="x", min=3.0, max=1.0)])


def test_state_dict_round_trip_keeps_patience_count():
    first = Watchdog([_rankme_min(patience=2)], action="stop")
    first.check(10, {"collapse/backbone_rankme": 1.0})
    resumed = Watchdog([_rankme_min(patience=2)], action="stop")
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(CollapseDetected):
        resumed.check(20, {"collapse/backbone_rankme": 1.0})


def test_default_thresholds_load_and_pass_healthy_values():
    cfg = load_config("default")
    watchdog = Watchdog.from_config(cfg.monitor, method_thresholds=WATCHDOG_THRESHOLDS)
    assert watchdog.thresholds == list(WATCHDOG_THRESHOLDS), "monitor.method_thresholds is on by default"
    assert (
        Watchdog.from_config(
            load_config("default", ["monitor.method_thresholds=false"]).monitor, method_thresholds=WATCHDOG_THRESHOLDS
        ).thresholds
        == []
    )
    healthy = {
        "collapse/backbone_std_ratio": 0.8,
        "collapse/backbone_rankme_ratio": 0.5,
        "collapse/backbone_rankme": 40.0,
        "collapse/head_std_ratio": 0.7,
        "collapse/teacher_entropy_norm": 0.4,
        "collapse/teacher_mean_entropy_norm": 0.95,
        "collapse/teacher_mean_entropy": 3.5,
        "collapse/student_teacher_kl": 0.5,
    }
    for iteration in range(0, 100_000, 5_000):
        assert watchdog.check(iteration, healthy) == []
