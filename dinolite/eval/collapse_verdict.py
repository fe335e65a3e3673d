"""The collapse report of a set of features (Jing et al. 2021; Garrido et al. 2023): std and RankMe of
L2-normalised CLS features, the sorted covariance spectrum, and a verdict by rules the report states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from dinolite.eval.finite import check_finite_rows
from dinolite.monitor import metrics

# Verdict rules of the collapse report (stated in the report itself).
COMPLETE_COLLAPSE_STD_RATIO = 0.05  # std * sqrt(D): ~1 for well spread features
COMPLETE_COLLAPSE_RANKME = 1.5
DIMENSIONAL_COLLAPSE_RANKME_RATIO = 0.05  # RankMe / min(N, D)
# Below this many samples no verdict is given. RankMe is at least 1 and a RankMe below 2 is already
# complete collapse, so the dimensional-collapse rule (RankMe < 5% of min(N, D)) can only fire for a
# spectrum of two or more directions when 5% of N exceeds 2, i.e. N >= 2 / 0.05 = 40. With fewer
# samples every non-complete spectrum would read "healthy" whatever the features are (3 images give
# "RankMe 2.4 = 80% of 3").
MIN_VERDICT_SAMPLES = math.ceil(2 / DIMENSIONAL_COLLAPSE_RANKME_RATIO)
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

    def to_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "dim": self.dim,
            "std": self.std,
            "std_ratio": self.std_ratio,
            "rankme": self.rankme,
            "rankme_ratio": self.rankme_ratio,
            "verdict": self.verdict,
            "rules": {
                "no verdict": f"num_samples < {MIN_VERDICT_SAMPLES}: below 2 / {DIMENSIONAL_COLLAPSE_RANKME_RATIO} samples "
                "the dimensional-collapse rule cannot fire for any spectrum of 2+ directions (RankMe >= 1)",
                "complete collapse": f"std_ratio < {COMPLETE_COLLAPSE_STD_RATIO} or rankme < {COMPLETE_COLLAPSE_RANKME}",
                "dimensional collapse": f"rankme_ratio < {DIMENSIONAL_COLLAPSE_RANKME_RATIO}",
                "std_ratio": "std of L2-normalised features per dim, averaged, times sqrt(dim) (SimSiam)",
                "rankme_ratio": "RankMe / min(num_samples, dim) (Garrido et al. 2023)",
            },
            "spectrum": self.spectrum,
        }


def collapse_report(features: Tensor) -> CollapseReport:
    """Collapse metrics of ``(N, D)`` features and a verdict by the rules in :class:`CollapseReport`."""
    if features.shape[0] < 2:
        raise ValueError(f"a collapse report needs at least 2 images, got {features.shape[0]}")
    # NaN features would give a NaN std and RankMe, and a verdict read off NaN comparisons.
    check_finite_rows(features, "collapse report: the CLS features", unit="images")
    n, d = features.shape
    std = metrics.embedding_std(features)
    rank = metrics.rankme(features)
    std_ratio, rank_ratio = std * math.sqrt(d), rank / min(n, d)
    if n < MIN_VERDICT_SAMPLES:
        verdict = NOT_ENOUGH_SAMPLES
    elif std_ratio < COMPLETE_COLLAPSE_STD_RATIO or rank < COMPLETE_COLLAPSE_RANKME:
        verdict = "complete collapse"
    elif rank_ratio < DIMENSIONAL_COLLAPSE_RANKME_RATIO:
        verdict = "dimensional collapse"
    else:
        verdict = "healthy"
    spectrum = metrics.covariance_spectrum(features).tolist()
    return CollapseReport(n, d, std, std_ratio, rank, rank_ratio, verdict, spectrum)
