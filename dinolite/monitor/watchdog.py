"""Watchdog: compare monitor metrics with thresholds, warn or stop the run.

A threshold (``monitor.thresholds[i]`` in the config, a ``WatchdogThreshold``) names a metric and a
``min`` and/or ``max``; a measurement is *flagged* when the value is below ``min``, above ``max``, or
not finite (NaN/inf always counts: it is divergence, not health). Measurements before
``after_iteration`` are ignored (warm-up is noisy). The watchdog acts once a threshold has been flagged
``patience`` measurements in a row; an unflagged measurement resets the count. Action ``warn`` logs and
returns the alerts; ``stop`` raises :class:`CollapseDetected` so the trainer ends the run and keeps the
last good checkpoint (the one written before the collapse was seen).
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from dinolite.config import WatchdogThreshold
from dinolite.monitor.collapse import METRIC_NAMES

ACTIONS = ("warn", "stop")


@dataclass(frozen=True)
class Alert:
    """One threshold crossed for ``patience`` consecutive measurements."""

    metric: str
    value: float
    bound: str  # "min" or "max" (or "finite" for NaN/inf)
    threshold: float
    iteration: int
    consecutive: int

    def message(self) -> str:
        if self.bound == "finite":
            rule = "must be finite"
        else:
            rule = f"{'below min' if self.bound == 'min' else 'above max'} {self.threshold:g}"
        return (
            f"collapse watchdog: {self.metric} = {self.value:.6g} at iteration {self.iteration} "
            f"({rule}; flagged {self.consecutive} measurement(s) in a row)"
        )


class CollapseDetected(RuntimeError):
    """Raised by ``Watchdog.check`` with action ``stop``; ``alerts`` holds what was crossed."""

    def __init__(self, alerts: Sequence[Alert]) -> None:
        self.alerts = list(alerts)
        super().__init__("; ".join(a.message() for a in self.alerts) + " - stopping the run")


class Watchdog:
    """Checks monitor metrics against thresholds (see the module docstring for the rules).

    Args:
        thresholds: ``WatchdogThreshold`` values (metric, min, max, after_iteration, patience).
        action: ``warn`` (log + return alerts) or ``stop`` (raise :class:`CollapseDetected`).
        logger: where warnings go; defaults to this module's logger.
        known_metrics: the ``collapse/...`` names a threshold may use (a typo gets a "did you mean");
            default :data:`dinolite.monitor.collapse.METRIC_NAMES` (DINOv2's embedding sources).
    """

    def __init__(
        self,
        thresholds: Sequence[WatchdogThreshold],
        action: str = "warn",
        logger: Optional[logging.Logger] = None,
        known_metrics: Sequence[str] = METRIC_NAMES,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"monitor.action must be one of {', '.join(ACTIONS)}, got {action!r}")
        for i, t in enumerate(thresholds):
            if not t.metric:
                raise ValueError(f"monitor.thresholds[{i}]: 'metric' is empty")
            if t.min is None and t.max is None:
                raise ValueError(f"monitor.thresholds[{i}] ({t.metric}): set at least one of min/max")
            if t.min is not None and t.max is not None and t.min > t.max:
                raise ValueError(f"monitor.thresholds[{i}] ({t.metric}): min {t.min} > max {t.max}")
            if t.metric.startswith("collapse/") and t.metric not in known_metrics:
                near = difflib.get_close_matches(t.metric, known_metrics, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(known_metrics)}"
                raise ValueError(f"monitor.thresholds[{i}].metric {t.metric!r} is not a monitor metric; {hint}")
            if t.patience < 1:
                raise ValueError(f"monitor.thresholds[{i}] ({t.metric}): patience must be >= 1, got {t.patience}")
        self.thresholds = list(thresholds)
        self.action = action
        self.logger = logger or logging.getLogger(__name__)
        self._consecutive = [0] * len(self.thresholds)

    @classmethod
    def from_config(
        cls,
        monitor_cfg,
        logger: Optional[logging.Logger] = None,
        method_thresholds: Sequence[WatchdogThreshold] = (),
        known_metrics: Sequence[str] = METRIC_NAMES,
    ) -> "Watchdog":
        """Build from the ``monitor`` config section: the method's default thresholds (the trainer passes
        ``MethodSpec.watchdog_thresholds``) when ``monitor.method_thresholds``, then ``monitor.thresholds``."""
        thresholds = [*(method_thresholds if monitor_cfg.method_thresholds else ()), *monitor_cfg.thresholds]
        return cls(thresholds, monitor_cfg.action, logger, known_metrics)

    def check(self, iteration: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Check the metrics of one measurement; returns the alerts (empty when all is well).

        Thresholds whose metric is absent from ``metrics`` are skipped (not measured at this iteration,
        or not provided by this objective); their patience count is kept. Raises :class:`CollapseDetected` when the action is ``stop`` and an alert fires.
        """
        alerts: list[Alert] = []
        for i, t in enumerate(self.thresholds):
            if t.metric not in metrics:
                continue
            if iteration < t.after_iteration:
                self._consecutive[i] = 0
                continue
            value = float(metrics[t.metric])
            flagged = self._flag(t, value)
            if flagged is None:
                self._consecutive[i] = 0
                continue
            self._consecutive[i] += 1
            if self._consecutive[i] >= t.patience:
                bound, limit = flagged
                alerts.append(Alert(t.metric, value, bound, limit, iteration, self._consecutive[i]))
        if alerts:
            if self.action == "stop":
                raise CollapseDetected(alerts)
            for alert in alerts:
                self.logger.warning(alert.message())
        return alerts

    @staticmethod
    def _flag(t: WatchdogThreshold, value: float) -> Optional[tuple[str, float]]:
        if not math.isfinite(value):
            return "finite", math.nan
        if t.min is not None and value < t.min:
            return "min", t.min
        if t.max is not None and value > t.max:
            return "max", t.max
        return None

    def state_dict(self) -> dict:
        """Consecutive-flag counters, so a resumed run keeps counting patience where it stopped."""
        return {"consecutive": list(self._consecutive)}

    def load_state_dict(self, state: Mapping) -> None:
        counts = list(state["consecutive"])
        if len(counts) != len(self.thresholds):
            raise ValueError(
                f"watchdog state has {len(counts)} counters but {len(self.thresholds)} thresholds are configured"
            )
        self._consecutive = counts
