"""Verdict: healthy, complete collapse or dimensional collapse, decided from a run's metric traces.

The kinds, and the papers whose figures they come from:

The absolute rules read the **output** channels, the embeddings the loss acts on (the projector / head
and the predictor), which is where the papers measure collapse (Chen & He's ``z``, Jing et al.'s embedding
space); the backbone is an output only for a method without a head (DirectCLR, SimCLR without
projector). The backbone of a method with a head is judged only relative to a reference run: a small ViT's
CLS feature is strongly anisotropic even when it is good (the SimSiam demo's backbone reaches 72.7% kNN at
``std * sqrt(d)`` 0.09 and RankMe 2.2 of 64), so absolute floors on it would call healthy runs collapsed.

- **complete collapse**: every image gets (nearly) the same output. Seen as
  - a constant embedding: the std of the L2-normalised embedding drops to 0 (SimSiam, Chen & He 2021,
    Fig. 2; healthy stays near 1/sqrt(d), i.e. ``std_ratio = std * sqrt(d)`` near 1). Rule:
    ``std_ratio < complete_std_ratio`` on an output channel;
  - one direction: ``RankMe < complete_rankme`` (1.5, the DINOv2 watchdog's "every CLS feature points the
    same way") on an output channel. A projector ending in a BatchNorm without affine (SimSiam's) keeps
    every output dimension at unit batch variance, so its std cannot fall to 0 even when all outputs lie
    on one line; its RankMe does fall to ~1, and the predictor after it (no BatchNorm) shows the std -> 0 of
    Chen & He's figure;
  - one prototype (DINO without centering, Caron et al. 2021): the batch-mean teacher distribution puts
    all mass on one prototype. Rule: ``teacher_mean_entropy / ln K < one_prototype_entropy``;
  - a uniform output (DINO without sharpening): every teacher distribution is flat. Rule:
    ``teacher_entropy / ln K > uniform_entropy``.
- **dimensional collapse** (Jing et al. 2021): outputs differ between images but span few directions
  (many near-zero singular values). Rules (not complete, and either):
  - ``RankMe / min(N, D) < dimensional_rank_ratio`` on an output channel: an absolute floor, low because
    a small healthy network on a 10-class data set already has a low effective rank;
  - relative, as Jing et al. compare (SimCLR without vs with a projector): when the run names a
    ``reference`` run, its RankMe is below ``dimensional_reference_fraction`` x the reference's at the
    same iterations: the evaluated backbone's on the evaluation images (checkpoints), or any channel's
    in the training traces.
- **healthy**: none of the above.
- **diverged**: the loss or a metric became NaN/inf (no collapse verdict can be read from it).

Beside the collapse verdict, a run with a ``reference`` is **compared** with it (:func:`compare`), as Wang
et al. 2022 ("On the Importance of Asymmetry for Siamese Representation Learning") judge each asymmetric
design against its baseline: the final top-1 (kNN or linear, ``comparison_metric``) of the evaluated
network is *better than*, *worse than* or *on par with* the reference's, with ``comparison_margin`` points
as the band of "on par" (set it from the spread of the same run under another seed).

A condition counts only when it *persists*: it must hold at every measurement of the last
``settle_fraction`` of the run (at least the last one). Early training can look collapsed (LayerScale
or a random head make every output alike at first; see docs/monitor.md), and a transient dip
that recovers is not a collapse. ``since`` is the first iteration from which the condition held at
every later measurement: when the run collapsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from dinolite.lab.matrix import BETTER, COMPLETE, DIMENSIONAL, HEALTHY, ON_PAR, WORSE, VerdictRules
from dinolite.lab.traces import CHANNELS, RunTrace, Series

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
    last ``settle_fraction`` of the run (at least the last point); None otherwise."""
    if not series:
        return None
    settle_from = series.iterations[-1] * (1.0 - settle_fraction)
    first_in_window = min(it for it in series.iterations if it >= settle_from)
    since = None
    for it, value in zip(reversed(series.iterations), reversed(series.values)):
        if not (math.isfinite(value) and condition(value)):
            break
        since = it
    return since if since is not None and since <= first_in_window else None


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

    outputs = output_channels(trace)
    candidates: list[tuple[str, str, Series, Callable[[float], bool], str]] = []
    for channel in outputs:
        candidates.append(
            (
                COMPLETE,
                f"constant {channel} output",
                trace.channel(channel, "std_ratio"),
                lambda v: v < rules.complete_std_ratio,
                f"std x sqrt(d) < {rules.complete_std_ratio:g}",
            )
        )
    for channel in outputs:
        candidates.append(
            (
                COMPLETE,
                f"one-direction {channel}",
                trace.channel(channel, "rankme"),
                lambda v: v < rules.complete_rankme,
                f"RankMe < {rules.complete_rankme:g}",
            )
        )
    candidates.append(
        (
            COMPLETE,
            "one prototype",
            trace.teacher("teacher_mean_entropy_norm"),
            lambda v: v < rules.one_prototype_entropy,
            f"H(mean teacher)/ln K < {rules.one_prototype_entropy:g}",
        )
    )
    candidates.append(
        (
            COMPLETE,
            "uniform output",
            trace.teacher("teacher_entropy_norm"),
            lambda v: v > rules.uniform_entropy,
            f"H(teacher)/ln K > {rules.uniform_entropy:g}",
        )
    )
    for channel in outputs:
        candidates.append(
            (
                DIMENSIONAL,
                f"low-rank {channel}",
                trace.channel(channel, "rankme_ratio"),
                lambda v: v < rules.dimensional_rank_ratio,
                f"RankMe/min(N,D) < {rules.dimensional_rank_ratio:g}",
            )
        )
    fraction = rules.dimensional_reference_fraction
    if eval_rank and reference_rank:
        candidates.append(
            (
                DIMENSIONAL,
                f"fewer dimensions than {reference}",
                _ratio(eval_rank, reference_rank),
                lambda v: v < fraction,
                f"eval RankMe < {fraction:g} x {reference}'s",
            )
        )
    if reference_trace is not None:
        for channel in CHANNELS:
            ratio = _ratio(trace.channel(channel, "rankme"), reference_trace.channel(channel, "rankme"))
            candidates.append(
                (
                    DIMENSIONAL,
                    f"fewer {channel} dimensions than {reference}",
                    ratio,
                    lambda v: v < fraction,
                    f"{channel} RankMe < {fraction:g} x {reference}'s",
                )
            )
    findings = []
    for kind, mode, series, condition, rule in candidates:
        since = persistent_since(series, condition, rules.settle_fraction)
        if since is not None:
            findings.append(Finding(kind, mode, since, series.last, rule))
    for kind in (COMPLETE, DIMENSIONAL):
        if any(f.kind == kind for f in findings):
            return Verdict(kind, findings, evidence)
    return Verdict(HEALTHY, findings, evidence)


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
        for stat in ("std_ratio", "rankme", "rankme_ratio"):
            series = trace.channel(channel, stat)
            if series:
                out[f"{channel}_{stat}"] = series.last
    for name in ("teacher_entropy_norm", "teacher_mean_entropy_norm", "student_teacher_kl"):
        series = trace.teacher(name)
        if series:
            out[name] = series.last
    if trace.loss():
        out["loss"] = trace.loss().last
    return out
