"""Watchdog: check each collapse measurement against collapse rules, warn or stop the run.

The rules are :class:`dinolite.monitor.collapse_rules.CollapseRule` values: the method's defaults
(``MethodSpec.watchdog_thresholds``), then the config's ``monitor.thresholds`` entries (a metric name
with a ``min`` and/or ``max``, read into the same rules). A measurement is *flagged* when the value
crosses the rule: below ``min``, above ``max``, or not finite (NaN/inf always counts: it is divergence,
not health). Measurements before ``after_iteration`` are ignored (warm-up is noisy). The watchdog acts
once a rule has been flagged ``patience`` measurements in a row; an unflagged measurement resets the
count. Action ``warn`` logs and returns the alerts; ``stop`` raises :class:`CollapseDetected` so the
trainer ends the run and keeps the last good checkpoint (the one written before the collapse was seen).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from dinolite.config import WatchdogThreshold
from dinolite.monitor.collapse import METRIC_NAMES
from dinolite.monitor.collapse_rules import BELOW, NOT_FINITE, CollapseRule

ACTIONS = ("warn", "stop")
Rule = Union[CollapseRule, WatchdogThreshold]  # a config entry is read into a CollapseRule


@dataclass(frozen=True)
class Alert:
    """One rule crossed for ``patience`` consecutive measurements."""

    metric: str
    value: float
    bound: str  # "min" or "max" (or "finite" for NaN/inf)
    threshold: float
    iteration: int
    consecutive: int
    mode: str = ""  # the collapse mode the rule indicates (collapse_rules), "" when it names none

    def message(self) -> str:
        if self.bound == NOT_FINITE:
            rule = "must be finite"
        else:
            rule = f"{'below min' if self.bound == BELOW else 'above max'} {self.threshold:g}"
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
    """Checks monitor metrics against collapse rules (see the module docstring).

    Args:
        thresholds: ``CollapseRule`` values, or config ``WatchdogThreshold`` entries (metric, min, max,
            after_iteration, patience), which are read into rules; ``self.thresholds`` holds the rules.
        action: ``warn`` (log + return alerts) or ``stop`` (raise :class:`CollapseDetected`).
        logger: where warnings go; defaults to this module's logger.
        known_metrics: the ``collapse/...`` names a threshold may use (a typo gets a "did you mean");
            default :data:`dinolite.monitor.collapse.METRIC_NAMES` (DINOv2's embedding sources).
    """

    def __init__(
        self,
        thresholds: Sequence[Rule],
        action: str = "warn",
        logger: Optional[logging.Logger] = None,
        known_metrics: Sequence[str] = METRIC_NAMES,
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"monitor.action must be one of {', '.join(ACTIONS)}, got {action!r}")
        self.thresholds = [as_rule(rule) for rule in thresholds]
        for i, rule in enumerate(self.thresholds):
            check_rule(rule, f"monitor.thresholds[{i}]", known_metrics)
        self.action = action
        self.logger = logger or logging.getLogger(__name__)
        self._consecutive = [0] * len(self.thresholds)

    @classmethod
    def from_config(
        cls,
        monitor_cfg,
        logger: Optional[logging.Logger] = None,
        method_thresholds: Sequence[Rule] = (),
        known_metrics: Sequence[str] = METRIC_NAMES,
    ) -> "Watchdog":
        """Build from the ``monitor`` config section: the method's default rules (the trainer passes
        ``MethodSpec.watchdog_thresholds``) when ``monitor.method_thresholds``, then ``monitor.thresholds``."""
        thresholds = [*(method_thresholds if monitor_cfg.method_thresholds else ()), *monitor_cfg.thresholds]
        return cls(thresholds, monitor_cfg.action, logger, known_metrics)

    def check(self, iteration: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Check the metrics of one measurement; returns the alerts (empty when all is well).

        Thresholds whose metric is absent from ``metrics`` are skipped (not measured at this iteration,
        or not provided by this objective); their patience count is kept. Raises :class:`CollapseDetected` when the action is ``stop`` and an alert fires.
        """
        alerts: list[Alert] = []
        for i, rule in enumerate(self.thresholds):
            if rule.metric not in metrics:
                continue
            if iteration < rule.after_iteration:
                self._consecutive[i] = 0
                continue
            value = float(metrics[rule.metric])
            crossed = rule.crossing(value)
            if crossed is None:
                self._consecutive[i] = 0
                continue
            self._consecutive[i] += 1
            if self._consecutive[i] >= rule.patience:
                bound, limit = crossed
                alerts.append(Alert(rule.metric, value, bound, limit, iteration, self._consecutive[i], rule.mode))
        if alerts:
            if self.action == "stop":
                raise CollapseDetected(alerts)
            for alert in alerts:
                self.logger.warning(alert.message())
        return alerts

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


def as_rule(rule: Rule) -> CollapseRule:
    """A config ``WatchdogThreshold`` as the :class:`CollapseRule` it states (a rule is returned as is)."""
    if isinstance(rule, CollapseRule):
        return rule
    return CollapseRule.from_metric(rule.metric, rule.min, rule.max, rule.after_iteration, rule.patience)


def check_rule(rule: CollapseRule, where: str, known_metrics: Sequence[str] = METRIC_NAMES) -> None:
    """A rule the watchdog can apply, or a ValueError naming ``where`` (``monitor.thresholds[i]``)."""
    metric = rule.metric
    if not rule.stat:
        raise ValueError(f"{where}: 'metric' is empty")
    if rule.min is None and rule.max is None:
        raise ValueError(f"{where} ({metric}): set at least one of min/max")
    if rule.min is not None and rule.max is not None and rule.min > rule.max:
        raise ValueError(f"{where} ({metric}): min {rule.min} > max {rule.max}")
    if metric.startswith("collapse/") and metric not in known_metrics:
        near = difflib.get_close_matches(metric, known_metrics, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(known_metrics)}"
        raise ValueError(f"{where}.metric {metric!r} is not a monitor metric; {hint}")
    if rule.patience < 1:
        raise ValueError(f"{where} ({metric}): patience must be >= 1, got {rule.patience}")
