"""Verdict: healthy, complete collapse or dimensional collapse, decided from a run's metric traces.

The rules are the ones every judge of collapse reads (:mod:`dinolite.monitor.collapse_rules`: a
statistic on a channel, its threshold, the mode it shows), read here on the logged series; the matrix's
``verdict:`` section (:class:`~dinolite.lab.matrix.VerdictRules`, defaults from that module) and a run's
own ``verdict:`` entries set the thresholds. Why each rule and threshold, and the runs that place them:
docs/monitor.md#collapse-rules; how the lab applies them: docs/collapse.md#the-verdict.

The absolute rules read the **output** channels, the embeddings the loss acts on (the projector / head
and the predictor), which is where the papers measure collapse (Chen & He's ``z``, Jing et al.'s embedding
space); the backbone is an output only for a method without a head (DirectCLR, SimCLR without
projector). The backbone of a method with a head is judged only relative to a reference run: a small ViT's
CLS feature can be strongly anisotropic and still good, so absolute floors on it would call healthy runs
collapsed.

- **complete collapse**: every image gets (nearly) the same output: a constant output (std x sqrt(d) of
  the L2-normalised embedding, ``complete_std_ratio``), outputs on one line (RankMe, ``complete_rankme``;
  how a projector ending in BatchNorm without affine collapses, its std held up by the BatchNorm), one
  prototype (the batch-mean teacher entropy / ln K, ``one_prototype_entropy``; DINO without centering), a
  uniform output (per-image teacher entropy / ln K, ``uniform_entropy``; DINO without sharpening).
- **dimensional collapse** (Jing et al. 2021): outputs differ between images but span few directions.
  Either ``RankMe / min(N, D) < dimensional_rank_ratio`` on an output channel (an absolute floor, low
  because a small healthy network on a 10-class data set already has a low effective rank), or, as Jing
  et al. compare (SimCLR without vs with a projector), RankMe below ``dimensional_reference_fraction`` x
  the ``reference`` run's at the same iterations: the evaluated backbone's on the evaluation images
  (checkpoints), or any channel's in the training traces.
- **healthy**: none of the above.
- **diverged**: the loss or a metric became NaN/inf (no collapse verdict can be read from it).

Beside the collapse verdict, a run with a ``reference`` is **compared** with it (:func:`compare`), as Wang
et al. 2022 ("On the Importance of Asymmetry for Siamese Representation Learning") judge each asymmetric
design against its baseline: the final top-1 (kNN or linear, ``comparison_metric``) of the evaluated
network is *better than*, *worse than* or *on par with* the reference's, with ``comparison_margin`` points
as the band of "on par" (set it from the spread of the same run under another seed).

A condition counts only when it *persists*: it must hold at every measurement of the last
``settle_fraction`` of the run (at least the last one; :func:`~dinolite.monitor.collapse_rules.settled_since`).
Early training can look collapsed (LayerScale or a random head make every output alike at first; see
docs/monitor.md), and a transient dip that recovers is not a collapse. ``since`` is the first iteration
from which the condition held at every later measurement: when the run collapsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from dinolite.lab.matrix import BETTER, ON_PAR, WORSE, VerdictRules
from dinolite.lab.traces import CHANNELS, RunTrace, Series
from dinolite.monitor.collapse_rules import (
    CollapseRule,
    constant_output,
    fewer_dimensions,
    low_rank,
    one_direction,
    one_prototype,
    settled_since,
    uniform_output,
    verdict_kind,
)

DIVERGED = "diverged"
NO_DATA = "no data"


@dataclass(frozen=True)
class Finding:
    """One condition that holds: what it is, since when, and the number that shows it."""

    kind: str
    mode: str
    since: int
    value: float
    rule: str

    def describe(self) -> str:
        return f"{self.mode}: {self.rule} (last {self.value:.3g}), from iteration {self.since}"


@dataclass
class Verdict:
    kind: str
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)

    @property
    def since(self) -> Optional[int]:
        return min((f.since for f in self.findings if f.kind == self.kind), default=None)

    @property
    def mode(self) -> str:
        return ", ".join(f.mode for f in self.findings if f.kind == self.kind)

    def reproduces(self, expected: str) -> bool:
        return self.kind == expected


@dataclass(frozen=True)
class Comparison:
    """A run's final top-1 against its reference's: the outcome and the numbers behind it."""

    outcome: str  # better than / worse than / on par with reference, or "no data"
    metric: str  # knn | linear
    value: Optional[float]
    reference_value: Optional[float]
    reference: str
    margin: float

    @property
    def delta(self) -> Optional[float]:
        if self.value is None or self.reference_value is None:
            return None
        return self.value - self.reference_value

    def describe(self) -> str:
        if self.delta is None:
            return f"{self.metric} top-1 missing for this run or {self.reference}: no comparison"
        return (
            f"{self.metric} {self.value:.1f} vs {self.reference_value:.1f} for {self.reference} "
            f"({self.delta:+.1f} points, margin {self.margin:g}): {self.outcome}"
        )


def _top1(result: Optional[dict], metric: str) -> Optional[float]:
    value = ((result or {}).get(metric) or {}).get("top1")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare(
    result: Optional[dict], reference_result: Optional[dict], rules: VerdictRules, reference: str
) -> Comparison:
    """Final ``rules.comparison_metric`` top-1 of a run (its ``lab_result.json``) against its reference's:
    better when higher by at least ``comparison_margin`` points, worse when lower by at least that, else on
    par; "no data" when either run lacks the number."""
    metric, margin = rules.comparison_metric, rules.comparison_margin
    value, ref = _top1(result, metric), _top1(reference_result, metric)
    if value is None or ref is None:
        return Comparison(NO_DATA, metric, value, ref, reference, margin)
    delta = value - ref
    outcome = BETTER if delta >= margin else WORSE if delta <= -margin else ON_PAR
    return Comparison(outcome, metric, value, ref, reference, margin)


def persistent_since(series: Series, condition: Callable[[float], bool], settle_fraction: float) -> Optional[int]:
    """First iteration from which ``condition`` holds at every later point, provided it holds over the
    last ``settle_fraction`` of the run (at least the last point); None otherwise
    (:func:`dinolite.monitor.collapse_rules.settled_since` on a trace series)."""
    return settled_since(series.iterations, series.values, condition, settle_fraction)


def judge(
    trace: RunTrace,
    rules: VerdictRules,
    diverged_at: Optional[int] = None,
    eval_rank: Optional[Series] = None,
    reference_rank: Optional[Series] = None,
    reference: str = "reference",
    reference_trace: Optional[RunTrace] = None,
) -> Verdict:
    """The verdict of one run's traces under ``rules`` (see the module docstring).

    ``diverged_at``: the iteration at which training stopped on a non-finite loss (the loop raises
    before logging it, so the trace alone cannot show it). ``eval_rank`` / ``reference_rank``: RankMe of
    this run's and of its ``reference`` run's evaluated backbone at their checkpoints;
    ``reference_trace``: the reference run's trace (its RankMe per channel, at the same iterations).
    """
    evidence = _evidence(trace)
    if diverged_at is not None:
        return Verdict(
            DIVERGED, [Finding(DIVERGED, "non-finite loss", diverged_at, math.nan, "loss is NaN/inf")], evidence
        )
    loss = trace.loss()
    bad = [it for it, v in zip(loss.iterations, loss.values) if not math.isfinite(v)]
    if bad:
        return Verdict(DIVERGED, [Finding(DIVERGED, "non-finite loss", bad[0], math.nan, "loss is NaN/inf")], evidence)
    measured = any(trace.channel_prefix(c) for c in CHANNELS) or bool(trace.teacher("teacher_entropy_norm"))
    if not measured:
        return Verdict(NO_DATA, evidence=evidence)
    candidates = [
        *absolute_candidates(trace, rules),
        *reference_candidates(trace, rules, eval_rank, reference_rank, reference, reference_trace),
    ]
    findings, held = [], []
    for rule, mode, series, text in candidates:
        since = persistent_since(series, rule.holds, rules.settle_fraction)
        if since is not None:
            findings.append(Finding(rule.kind, mode, since, series.last, text))
            held.append(rule)
    return Verdict(verdict_kind(held), findings, evidence)


# A rule as the lab reads it: the rule, the finding's name, the series it reads, the condition in words.
Candidate = tuple[CollapseRule, str, Series, str]


def verdict_rules(rules: VerdictRules, outputs: list[str]) -> list[CollapseRule]:
    """The absolute rules of a matrix's (or run's) thresholds, on the run's output channels, in the
    report's order: constant output, one direction, one prototype, uniform output, low rank."""
    return [
        *(constant_output(channel, rules.complete_std_ratio) for channel in outputs),
        *(one_direction(channel, rules.complete_rankme) for channel in outputs),
        one_prototype(rules.one_prototype_entropy),
        uniform_output(rules.uniform_entropy),
        *(low_rank(channel, rules.dimensional_rank_ratio) for channel in outputs),
    ]


def absolute_candidates(trace: RunTrace, rules: VerdictRules) -> list[Candidate]:
    """Each absolute rule with the trace series it reads (a lab channel resolves to the method's prefix)."""
    candidates = []
    for rule in verdict_rules(rules, output_channels(trace)):
        series = trace.channel(rule.channel, rule.stat) if rule.channel else trace.series(rule.metric)
        candidates.append((rule, rule.label(), series, rule.condition()))
    return candidates


def reference_candidates(
    trace: RunTrace,
    rules: VerdictRules,
    eval_rank: Optional[Series],
    reference_rank: Optional[Series],
    reference: str,
    reference_trace: Optional[RunTrace],
) -> list[Candidate]:
    """The relative rule (Jing et al.): RankMe against the reference run's, on the evaluation images'
    spectra when both runs have them, and on every channel of the training traces."""
    fraction = rules.dimensional_reference_fraction
    candidates = []
    if eval_rank and reference_rank:
        rule = fewer_dimensions("backbone", fraction)
        text = f"eval RankMe < {fraction:g} x {reference}'s"
        candidates.append((rule, f"fewer dimensions than {reference}", _ratio(eval_rank, reference_rank), text))
    if reference_trace is not None:
        for channel in CHANNELS:
            rule = fewer_dimensions(channel, fraction)
            ratio = _ratio(trace.channel(channel, "rankme"), reference_trace.channel(channel, "rankme"))
            text = f"{channel} RankMe < {fraction:g} x {reference}'s"
            candidates.append((rule, f"fewer {channel} dimensions than {reference}", ratio, text))
    return candidates


def output_channels(trace: RunTrace) -> list[str]:
    """The channels the absolute rules read: the heads the run logged, or the backbone when it has none."""
    heads = [c for c in CHANNELS if c != "backbone" and trace.channel_prefix(c)]
    return heads or ["backbone"]


def _ratio(series: Series, reference: Series) -> Series:
    """``series / reference`` at the iterations both have (reference values > 0)."""
    ref = dict(zip(reference.iterations, reference.values))
    common = [(it, v / ref[it]) for it, v in zip(series.iterations, series.values) if ref.get(it, 0) > 0]
    return Series([it for it, _ in common], [r for _, r in common])


def _evidence(trace: RunTrace) -> dict[str, float]:
    """Last values of the comparable metrics (for the report's table and the reproduced/not line)."""
    out: dict[str, float] = {}
    for channel in CHANNELS:
        for stat in ("std_ratio", "rankme", "rankme_ratio", "alpha_req", "lidar"):
            series = trace.channel(channel, stat)
            if series:
                out[f"{channel}_{stat}"] = series.last
    for name in ("teacher_entropy_norm", "teacher_mean_entropy_norm", "student_teacher_kl", "teacher_prototypes_used"):
        series = trace.teacher(name)
        if series:
            out[name] = series.last
    if trace.loss():
        out["loss"] = trace.loss().last
    return out
