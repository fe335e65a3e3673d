"""Stepwise learning (Simon et al. 2023, "On the Stepwise Nature of Self-Supervised Learning", ICML, Fig. 1):
from a small initialisation (``student.init_scale``), Barlow Twins, SimCLR and VICReg learn the eigendirections
of their embedding one at a time: the loss falls in a staircase and the eigenvalues of the embedding
covariance rise in sequence, each from near zero to its plateau, well separated in time.

The trace is what the collapse monitor logs with ``monitor.eigenvalues`` = N (the matrix's
``measurements.eigenvalues``): ``collapse/<prefix>_eig_<k>``, the k-th largest eigenvalue of the covariance
of the raw projector output (the embedding the loss sees) on the measured training batch.

The measurement: eigenvalue k has *risen* at the first measured iteration where it reaches ``fraction`` of
the run's final largest eigenvalue (the mean of the last ``settle`` measurements of ``eig_1``), provided it
started from near zero: at its first measurement at least ``depth`` decades below that threshold. One that
started closer was there from the start (an ordinary initialisation), not learned in a step. Rises closer
than ``min_gap`` iterations are one step (they happened together); the run is stepwise when its risen
eigenvalues rose in at least ``MIN_STEPS`` separate steps. Eigenvalues are sorted, so they always rise in
index order: what the paper's picture adds is the separation in time, which is what is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dinolite.lab.matrix_plan import LabPlan
from dinolite.lab.report_figures import Figure, colormap, save_figure  # the report's one figure toolkit
from dinolite.lab.report_sections import ReportSection
from dinolite.lab.run_reports import RunReport
from dinolite.lab.traces import RunTrace, Series

FRACTION = 0.1  # risen: at 10% of the final largest eigenvalue (the paper's plateaus are of one order)
MIN_STEPS = 3  # a staircase: at least three separate rises
SETTLE = 5  # measurements averaged for the final largest eigenvalue
DEPTH = 2.0  # decades under the threshold an eigenvalue must start from for its crossing to count as a rise
CHANNEL_PREFIXES = ("collapse/projector", "collapse/head", "collapse/backbone")  # the embedding the loss sees first


@dataclass(frozen=True)
class Stepwise:
    """When each tracked eigenvalue rose, grouped into steps."""

    tracked: int  # eigenvalues in the trace
    threshold: float  # fraction x the final largest eigenvalue
    rises: tuple[tuple[int, int], ...]  # (k, iteration) of each eigenvalue that rose, k ascending
    present: tuple[int, ...]  # the k that started within DEPTH decades of the threshold (no rise to count)
    steps: tuple[tuple[int, ...], ...]  # the k of each step, in time order
    min_gap: int

    @property
    def stepwise(self) -> bool:
        return len(self.steps) >= MIN_STEPS

    def describe(self) -> str:
        present = (
            f"eig {', '.join(str(k) for k in self.present)} near the threshold from the start (no rise); "
            if self.present
            else ""
        )
        if not self.rises:
            return f"{present}no eigenvalue of {self.tracked} rose from near zero to {self.threshold:.3g}: **not stepwise**"
        at = ", ".join(f"eig {k} at {it}" for k, it in self.rises)
        groups = " | ".join(",".join(str(k) for k in step) for step in self.steps)
        verdict = "stepwise" if self.stepwise else "not stepwise"
        return (
            f"{present}{len(self.rises)} of {self.tracked} eigenvalues rose from near zero to {self.threshold:.3g} ({at}); "
            f"{len(self.steps)} separate step(s) (rises {self.min_gap}+ iterations apart): {groups}: **{verdict}**"
        )


def eigenvalue_series(trace: RunTrace) -> dict[int, Series]:
    """``{k: eig_k over iterations}`` of the first embedding the run logged eigenvalues for (projector first)."""
    for prefix in CHANNEL_PREFIXES:
        out: dict[int, Series] = {}
        k = 1
        while series := trace.series(f"{prefix}_eig_{k}"):
            out[k] = series
            k += 1
        if out:
            return out
    return {}


def measure_stepwise(
    eigenvalues: dict[int, Series],
    fraction: float = FRACTION,
    min_gap: int | None = None,
    settle: int = SETTLE,
    depth: float = DEPTH,
) -> Stepwise | None:
    """The rises and steps of ``eigenvalues`` (``{k: Series}``, k from 1); None without a trace.

    ``min_gap`` defaults to 5% of the traced iterations (at least 2 measurement intervals).
    """
    if 1 not in eigenvalues or not eigenvalues[1]:
        return None
    top = eigenvalues[1]
    final = sum(top.values[-settle:]) / len(top.values[-settle:])
    threshold = fraction * final
    if min_gap is None:
        span = top.iterations[-1] - top.iterations[0]
        interval = top.iterations[1] - top.iterations[0] if len(top.iterations) > 1 else 1
        min_gap = max(2 * interval, round(0.05 * span))
    rises, present = [], []
    for k in sorted(eigenvalues):
        s = eigenvalues[k]
        if s.values and s.values[0] >= threshold * 10.0 ** (-depth):
            present.append(k)
            continue
        first = next((it for it, v in zip(s.iterations, s.values) if v >= threshold), None)
        if first is not None:
            rises.append((k, first))
    steps: list[list[int]] = []
    last = None
    for k, it in sorted(rises, key=lambda r: (r[1], r[0])):
        if last is None or it - last >= min_gap:
            steps.append([k])
        else:
            steps[-1].append(k)
        last = it
    return Stepwise(len(eigenvalues), threshold, tuple(rises), tuple(present), tuple(tuple(s) for s in steps), min_gap)


def stepwise_text(reports: list[RunReport]) -> str:
    """The report's section: each run's rises and steps, or that it logged no eigenvalues."""
    lines = [
        "## Stepwise learning (Simon et al. 2023, Fig. 1)",
        "",
        f"An eigenvalue has risen at the first measurement where it reaches {FRACTION:g} x the run's final largest "
        f"eigenvalue (mean of its last {SETTLE} measurements), if its first measurement was at least {DEPTH:g} "
        "decades below that (else it was there from the start); rises closer than the gap are one step; a run is "
        f"stepwise with at least {MIN_STEPS} separate steps (dinolite/lab/stepwise.py).",
        "",
    ]
    for r in reports:
        result = measure_stepwise(eigenvalue_series(r.trace))
        lines.append(f"- `{r.run.label}`: " + (result.describe() if result else "no eigenvalue trace logged"))
    return "\n".join(lines)


def plot_stepwise(reports: list[RunReport], path: Path) -> bool:
    """The paper's Fig. 1 shape, one column per run: the loss over iterations (top) and the top eigenvalues of
    the embedding covariance over iterations on a log scale (bottom), one line per eigenvalue."""
    traced = [(r, eigenvalue_series(r.trace)) for r in reports]
    traced = [(r, eig) for r, eig in traced if eig]
    if not traced:
        return False
    fig = Figure(figsize=(4.2 * len(traced), 6.4))
    axes = fig.subplots(2, len(traced), squeeze=False)
    for column, (r, eig) in enumerate(traced):
        loss_ax, eig_ax = axes[0][column], axes[1][column]
        loss = r.trace.loss()
        if loss:
            loss_ax.plot(loss.iterations, loss.values, color="black", lw=1.2)
        loss_ax.set_title(f"{r.run.label}: loss", fontsize=9)
        cmap = colormap("viridis")
        for k, s in eig.items():
            positive = [(it, v) for it, v in zip(s.iterations, s.values) if v > 0]
            if positive:
                its, vals = zip(*positive)
                eig_ax.plot(its, vals, color=cmap((k - 1) / max(len(eig) - 1, 1)), lw=1.0, label=f"eig {k}")
        eig_ax.set_yscale("log")
        # five decades under the largest value: the first measurements (all directions near 0 together) would
        # otherwise squeeze the staircase into the top of the panel
        largest = max((max(s.values) for s in eig.values() if s.values), default=0.0)
        if largest > 0:
            eig_ax.set_ylim(bottom=largest * 1e-5)
        eig_ax.set_title(f"{r.run.label}: embedding eigenvalues", fontsize=9)
        eig_ax.set_xlabel("iteration")
        if column == 0:
            eig_ax.legend(fontsize=6, loc="lower right", ncol=2)
    save_figure(fig, path)
    return True


STEPWISE_FIGURE = ("stepwise.png", "Loss and embedding eigenvalues over training (Simon et al. 2023, Fig. 1)")


def stepwise_section(plan: LabPlan, reports: list[RunReport], out_dir: Path) -> Optional[ReportSection]:
    """The report's section (:func:`stepwise_text`, and the figure when a run logged eigenvalues) when the
    matrix measures eigenvalues (``measurements.eigenvalues``); ``None`` otherwise."""
    if not plan.matrix.measurements.eigenvalues:
        return None
    drawn = plot_stepwise(reports, out_dir / STEPWISE_FIGURE[0])
    return ReportSection(stepwise_text(reports), (STEPWISE_FIGURE,) if drawn else ())
