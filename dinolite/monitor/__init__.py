"""Collapse diagnostics: metrics on embeddings, a monitor that gathers them across ranks, a watchdog.

Reads what the objective exposes; never changes training.
"""

from dinolite.monitor.collapse import CollapseMonitor, gather_rows
from dinolite.monitor.metrics import (
    batch_mean_entropy,
    covariance_spectrum,
    cross_entropy_kl,
    embedding_std,
    entropy,
    normalized_entropy,
    rankme,
    singular_values,
)
from dinolite.monitor.watchdog import Alert, CollapseDetected, Watchdog

__all__ = [
    "Alert",
    "CollapseDetected",
    "CollapseMonitor",
    "Watchdog",
    "batch_mean_entropy",
    "covariance_spectrum",
    "cross_entropy_kl",
    "embedding_std",
    "entropy",
    "gather_rows",
    "normalized_entropy",
    "rankme",
    "singular_values",
]
