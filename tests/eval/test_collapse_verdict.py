"""The visualiser's collapse verdict: healthy, collapsed and dimensionally collapsed features, and no
verdict on too few samples."""

import pytest
import torch

from dinolite.eval import collapse_verdict


def test_collapse_report_verdicts():
    g = torch.Generator().manual_seed(1)
    healthy = collapse_verdict.collapse_report(torch.randn(300, 32, generator=g))
    assert healthy.verdict == "healthy" and healthy.rankme_ratio > 0.8
    assert len(healthy.spectrum) == 32
    constant = collapse_verdict.collapse_report(torch.ones(50, 32))
    assert constant.verdict == "complete collapse"
    rank_two = torch.randn(300, 2, generator=g) @ torch.randn(2, 64, generator=g)
    report = collapse_verdict.collapse_report(rank_two)
    assert report.verdict == "dimensional collapse"
    assert report.rankme == pytest.approx(2.0, rel=0.3)


def test_no_verdict_below_the_minimum_sample_size():
    g = torch.Generator().manual_seed(2)
    few = collapse_verdict.collapse_report(torch.randn(collapse_verdict.MIN_VERDICT_SAMPLES - 1, 64, generator=g))
    assert few.verdict == "no verdict" and few.rankme > 1.0  # the metrics are still reported
    assert collapse_verdict.MIN_VERDICT_SAMPLES == 40  # 2 / 0.05: the first N where RankMe 2 is below 5% of N
    # Even a rank-2 (dimensionally collapsed) spectrum gets no verdict from 39 samples, since it reads
    # RankMe ~2 = 5.1% of 39 (> 5%), and the "healthy" it would otherwise get would be wrong.
    rank_two = torch.randn(39, 2, generator=g) @ torch.randn(2, 64, generator=g)
    assert collapse_verdict.collapse_report(rank_two).verdict == "no verdict"
    enough = torch.randn(40, 2, generator=g) @ torch.randn(2, 64, generator=g)
    assert collapse_verdict.collapse_report(enough).verdict == "dimensional collapse"
