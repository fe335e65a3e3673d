"""Collapse diagnostics: metrics on embeddings, a monitor that gathers them across ranks, the one set of
collapse rules (collapse_rules) that the watchdog, the visualiser's verdict and the lab's verdict read,
and the watchdog.

Reads what the objective exposes; never changes training.
"""

from dinolite.monitor.collapse import CollapseMonitor, gather_rows
from dinolite.monitor.collapse_rules import CollapseRule
from dinolite.monitor.metrics import (
    alpha_req,
    batch_mean_entropy,
    covariance_spectrum,
    cross_entropy_kl,
    embedding_std,
    entropy,
    lidar,
    normalized_entropy,
    power_law_exponent,
    rankme,
    singular_values,
)
from dinolite.monitor.watchdog import Alert, CollapseDetected, Watchdog

__all__ = [
    "Alert",
    "CollapseDetected",
    "CollapseMonitor",
    "CollapseRule",
    "Watchdog",
    "alpha_req",
    "batch_mean_entropy",
    "covariance_spectrum",
    "cross_entropy_kl",
    "embedding_std",
    "entropy",
    "gather_rows",
    "lidar",
    "normalized_entropy",
    "power_law_exponent",
    "rankme",
    "singular_values",
]
