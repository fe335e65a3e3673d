"""The collapse report of a set of features (Jing et al. 2021; Garrido et al. 2023): std and RankMe of
L2-normalised CLS features, the sorted covariance spectrum, and a verdict by the collapse rules of
:mod:`dinolite.monitor.collapse_rules` (the ones the watchdog and the lab read), which the report states.

The features are judged as one embedding, the backbone's, with the default thresholds. A backbone trained
under a projector can be far from isotropic and still good, which the lab judges against a reference run
instead (docs/monitor.md#collapse-rules): read the verdict beside a kNN accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from dinolite.eval.finite import check_finite_rows
from dinolite.monitor import metrics
from dinolite.monitor.collapse_rules import (
    COMPLETE,
    DIMENSIONAL,
    LOW_RANK_RANKME_RATIO,
    RANKME,
    RANKME_RATIO,
    STD_RATIO,
    CollapseRule,
    embedding_rules,
    holding_rules,
    verdict_kind,
)

# The rules a feature matrix is judged by: constant output and one direction (complete collapse), low
# rank (dimensional collapse), at the defaults every judge shares.
FEATURE_RULES: tuple[CollapseRule, ...] = embedding_rules("backbone")
# Below this many samples no verdict is given. RankMe is at least 1 and a RankMe below 2 is already
# complete collapse, so the dimensional-collapse rule (RankMe < 5% of min(N, D)) can only fire for a
# spectrum of two or more directions when 5% of N exceeds 2, i.e. N >= 2 / 0.05 = 40. With fewer
# samples every non-complete spectrum would read "healthy" whatever the features are (3 images give
# "RankMe 2.4 = 80% of 3").
MIN_VERDICT_SAMPLES = math.ceil(2 / LOW_RANK_RANKME_RATIO)
NOT_ENOUGH_SAMPLES = "no verdict"


@dataclass
class CollapseReport:
    num_samples: int
    dim: int
    std: float
    std_ratio: float
    rankme: float
    rankme_ratio: float
    verdict: str
    spectrum: list[float]  # covariance eigenvalues, descending
    findings: list[str] = field(default_factory=list)  # the rules that hold: "constant backbone output: ..."

    def to_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "dim": self.dim,
            "std": self.std,
            "std_ratio": self.std_ratio,
            "rankme": self.rankme,
            "rankme_ratio": self.rankme_ratio,
            "verdict": self.verdict,
            "findings": self.findings,
            "rules": rules_in_words(),
            "spectrum": self.spectrum,
        }


def rules_in_words() -> dict[str, str]:
    """What each verdict means, from the rules themselves (written into collapse_report.json)."""
    return {
        NOT_ENOUGH_SAMPLES: f"num_samples < {MIN_VERDICT_SAMPLES}: below 2 / {LOW_RANK_RANKME_RATIO} samples "
        "the dimensional-collapse rule cannot fire for any spectrum of 2+ directions (RankMe >= 1)",
        COMPLETE: " or ".join(rule.condition(rule.stat) for rule in FEATURE_RULES if rule.kind == COMPLETE),
        DIMENSIONAL: " or ".join(rule.condition(rule.stat) for rule in FEATURE_RULES if rule.kind == DIMENSIONAL),
        "std_ratio": "std of L2-normalised features per dim, averaged, times sqrt(dim) (SimSiam)",
        "rankme_ratio": "RankMe / min(num_samples, dim) (Garrido et al. 2023)",
    }


def collapse_report(features: Tensor) -> CollapseReport:
    """Collapse metrics of ``(N, D)`` features and a verdict by :data:`FEATURE_RULES`."""
    if features.shape[0] < 2:
        raise ValueError(f"a collapse report needs at least 2 images, got {features.shape[0]}")
    # NaN features would give a NaN std and RankMe, and a verdict read off NaN comparisons.
    check_finite_rows(features, "collapse report: the CLS features", unit="images")
    n, d = features.shape
    std = metrics.embedding_std(features)
    rank = metrics.rankme(features)
    stats = {STD_RATIO: std * math.sqrt(d), RANKME: rank, RANKME_RATIO: rank / min(n, d)}
    holding = holding_rules(stats, FEATURE_RULES)
    verdict = NOT_ENOUGH_SAMPLES if n < MIN_VERDICT_SAMPLES else verdict_kind(holding)
    findings = [f"{rule.label()}: {rule.condition()}" for rule in holding] if n >= MIN_VERDICT_SAMPLES else []
    spectrum = metrics.covariance_spectrum(features).tolist()
    return CollapseReport(n, d, std, stats[STD_RATIO], rank, stats[RANKME_RATIO], verdict, spectrum, findings)
