"""The lab's report: one Markdown page with PNG figures in the shapes of the papers' figures.

- ``std.png``: std of the L2-normalised output over iterations, one line per run, one panel per channel
  (backbone, projector, predictor; SimSiam, Chen & He 2021, Fig. 2). Plotted as std x sqrt(d) so methods
  of different widths share an axis: 1 is the isotropic level (std = 1/sqrt(d)), 0 is complete collapse.
- ``spectra.png``: log10 eigenvalues of the embedding covariance, sorted, one panel per run side by side,
  one line per checkpoint (Jing et al. 2021, Fig. 2/4 shape): dimensional collapse is a tail that falls
  off a cliff.
- ``rankme.png``: RankMe / min(N, D) over iterations (Garrido et al. 2023).
- ``teacher.png``: teacher entropy (per image and of the batch mean, / ln K) and the student-teacher KL,
  for methods with a teacher distribution (DINO, MSN): no centering -> one prototype, no sharpening ->
  uniform.
- ``loss.png``: the training loss of every run.
- ``comparison.png`` (runs expected to be better / worse than / on par with their reference, Wang et al.
  2022's asymmetry study): each run's final top-1 minus its reference's, with the "on par" band shaded.
- a table: expected finding, verdict (which kind, since when), the watchdog's first alert, kNN and
  linear top-1 of the evaluated network against random init, and whether the finding is reproduced,
  with the numbers behind it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dinolite.extras import optional_import
from dinolite.io import write_text_atomic
from dinolite.lab.evaluate import evaluated_spectra, random_init_baseline_path
from dinolite.lab.matrix import COMPARISONS, LabPlan, PlannedRun
from dinolite.lab.traces import (
    CHANNELS,
    RunTrace,
    Series,
    WatchdogReplay,
    read_result,
    read_trace,
    replay_watchdog,
)
from dinolite.lab.verdict import Comparison, Verdict, compare, judge

REPORT_FILE = "README.md"
_PURPOSE = "the collapse lab's report figures (launch/lab.py)"
DPI = 72  # small PNGs: the example report is committed


@dataclass
class RunReport:
    run: PlannedRun
    trace: RunTrace
    result: Optional[dict]
    verdict: Verdict
    watchdog: WatchdogReplay
    baseline: Optional[dict]
    comparison: Optional[Comparison] = None  # against the run's reference, when it names one

    @property
    def reproduced(self) -> bool:
        expect = self.run.spec.expect
        if expect in COMPARISONS:
            return self.comparison is not None and self.comparison.outcome == expect
        return self.verdict.reproduces(expect)


def eval_rank_series(result: Optional[dict]) -> Series:
    """RankMe of the evaluated backbone on the evaluation images at each kept checkpoint."""
    spectra = (result or {}).get("spectra") or []
    return Series([s["iteration"] for s in spectra], [s["rankme"] for s in spectra])


def collect(plan: LabPlan) -> list[RunReport]:
    """Read every run of the plan back from disk and judge it."""
    results = {run.label: read_result(run.run_dir) for run in plan.runs}
    traces = {run.label: read_trace(run.run_dir) for run in plan.runs}
    reports = []
    for run in plan.runs:
        trace = traces[run.label]
        result = results[run.label]
        diverged_at = result["iteration"] if result and result.get("status") == "diverged" else None
        reference = run.spec.reference
        verdict = judge(
            trace,
            plan.matrix.verdict,
            diverged_at,
            eval_rank_series(result),
            eval_rank_series(results.get(reference)) if reference else None,
            reference,
            traces.get(reference) if reference else None,
        )
        baseline = _read_json(random_init_baseline_path(run.config, plan.output_dir / "baselines", run.spec.features))
        comparison = compare(result, results.get(reference), plan.matrix.verdict, reference) if reference else None
        # the current watchdog rules (the planned config's), which may be newer than the run
        watchdog = replay_watchdog(run.config, trace)
        reports.append(RunReport(run, trace, result, verdict, watchdog, baseline, comparison))
    return reports


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def require_matplotlib() -> None:
    """Fail before any training when the report could not be drawn (matplotlib is the ``viz`` extra)."""
    optional_import("matplotlib.figure", extra="viz", purpose=_PURPOSE)


def Figure(**kwargs):  # noqa: N802 - stands for matplotlib's class
    """A matplotlib ``Figure`` (the object API: no pyplot state, no display backend needed)."""
    return optional_import("matplotlib.figure", extra="viz", purpose=_PURPOSE).Figure(**kwargs)


def _colormap(name: str):
    return optional_import("matplotlib", extra="viz", purpose=_PURPOSE).colormaps[name]


def _colors(n: int) -> list:
    cmap = _colormap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)


def _figure_legend(fig, axes) -> None:
    """One legend for all panels, right of them (a run appears once even when several panels show it)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def _channel_panels(reports: list[RunReport], stat: str, title: str):
    """One panel per channel with every run's ``stat`` over iterations; returns ``(fig, axes)``."""
    fig = Figure(figsize=(4.6 * len(CHANNELS), 3.6))
    axes = fig.subplots(1, len(CHANNELS), sharey=True)
    for ax, channel in zip(axes, CHANNELS):
        for color, r in zip(_colors(len(reports)), reports):
            s = r.trace.channel(channel, stat)
            if s:
                ax.plot(s.iterations, s.values, color=color, label=r.run.label, lw=1.5)
        ax.set_title(f"{channel} output: {title}", fontsize=9)
        ax.set_xlabel("iteration")
    return fig, axes


def plot_std(reports: list[RunReport], path: Path) -> None:
    fig, axes = _channel_panels(reports, "std_ratio", "std of L2-normalised embedding x sqrt(d)")
    for ax in axes:
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.text(0.01, 0.94, "std = 1/sqrt(d)", transform=ax.get_yaxis_transform(), fontsize=7, color="grey")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("std x sqrt(d)")
    _figure_legend(fig, axes)
    _save(fig, path)


def plot_rankme(reports: list[RunReport], path: Path) -> None:
    fig, axes = _channel_panels(reports, "rankme_ratio", "RankMe / min(N, D)")
    for ax in axes:
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("effective rank ratio")
    _figure_legend(fig, axes)
    _save(fig, path)


def plot_spectra(reports: list[RunReport], path: Path) -> bool:
    with_spectra = [(r, evaluated_spectra(r.result, r.baseline)) for r in reports]
    with_spectra = [(r, s) for r, s in with_spectra if s]
    if not with_spectra:
        return False
    cols = min(4, len(with_spectra))
    rows = math.ceil(len(with_spectra) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for ax in axes.flat[len(with_spectra) :]:
        ax.axis("off")
    for ax, (r, spectra) in zip(axes.flat, with_spectra):
        cmap = _colormap("viridis")
        for i, entry in enumerate(spectra):
            values = [max(v, 1e-12) for v in entry["eigenvalues"]]
            shade = cmap(i / max(len(spectra) - 1, 1))
            ax.plot(
                range(1, len(values) + 1),
                [math.log10(v) for v in values],
                color=shade,
                lw=1.2,
                label=f"it {entry['iteration']}" + (" (init)" if entry["iteration"] == 0 else ""),
            )
        ax.set_title(f"{r.run.label}\n{r.verdict.kind}", fontsize=8)
        ax.set_xlabel("eigenvalue rank", fontsize=8)
        ax.tick_params(labelsize=7)
        _legend(ax)
    for row in axes:
        row[0].set_ylabel("log10 eigenvalue", fontsize=8)
    fig.suptitle(
        "Covariance spectrum of the evaluated backbone's L2-normalised CLS, or mean patch token for avgpool runs "
        "(evaluation images)",
        fontsize=9,
    )
    _save(fig, path)
    return True


def plot_teacher(reports: list[RunReport], path: Path) -> bool:
    panels = [
        ("teacher_entropy_norm", "H(teacher) / ln K (per image)"),
        ("teacher_mean_entropy_norm", "H(batch-mean teacher) / ln K"),
        ("student_teacher_kl", "KL(teacher || student) (nats)"),
    ]
    if not any(r.trace.teacher(name) for r in reports for name, _ in panels):
        return False
    fig = Figure(figsize=(13, 3.4))
    axes = fig.subplots(1, 3)
    for ax, (name, title) in zip(axes, panels):
        for color, r in zip(_colors(len(reports)), reports):
            s = r.trace.teacher(name)
            if s:
                ax.plot(s.iterations, s.values, color=color, label=r.run.label, lw=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
    _figure_legend(fig, axes)
    _save(fig, path)
    return True


def plot_loss(reports: list[RunReport], path: Path) -> None:
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    for color, r in zip(_colors(len(reports)), reports):
        s = r.trace.loss()
        if s:
            ax.plot(s.iterations, s.values, color=color, label=r.run.label, lw=1.5)
    ax.set_title("training loss (each method its own objective)", fontsize=9)
    ax.set_xlabel("iteration")
    _legend(ax)
    _save(fig, path)


def plot_comparison(reports: list[RunReport], path: Path) -> bool:
    compared = [
        r for r in reports if r.run.spec.expect in COMPARISONS and r.comparison and r.comparison.delta is not None
    ]
    if not compared:
        return False
    fig = Figure(figsize=(7, 0.5 * len(compared) + 1.4))
    ax = fig.subplots()
    margin = compared[0].comparison.margin
    ax.axvspan(-margin, margin, color="grey", alpha=0.2, label=f"on par (+-{margin:g} points)")
    labels = []
    for i, r in enumerate(compared):
        delta = r.comparison.delta
        color = "tab:green" if r.reproduced else "tab:red"
        ax.barh(i, delta, color=color)
        ax.text(delta, i, f" {delta:+.1f}", va="center", ha="left" if delta >= 0 else "right", fontsize=8)
        labels.append(
            f"{r.run.label}\n(expected: {r.run.spec.expect.removesuffix(' reference').removesuffix(' than').removesuffix(' with')}; vs {r.comparison.reference})"
        )
    ax.set_yticks(range(len(compared)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{compared[0].comparison.metric} top-1 minus the reference's (points)")
    ax.set_title("Against the reference (green: as expected, red: not)", fontsize=9)
    _legend(ax)
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")  # keeps a legend placed outside the axes
    tmp.replace(path)  # atomic: a reader never sees half a PNG


def _pct(value: Optional[float]) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _evidence_text(r: RunReport) -> str:
    parts = [r.comparison.describe()] if r.comparison else []
    parts += [f.describe() for f in r.verdict.findings]
    ev = r.verdict.evidence
    for key, label in (
        ("backbone_std_ratio", "backbone std*sqrt(d)"),
        ("projector_std_ratio", "projector std*sqrt(d)"),
        ("predictor_std_ratio", "predictor std*sqrt(d)"),
        ("projector_rankme", "projector RankMe"),
        ("backbone_rankme_ratio", "backbone RankMe ratio"),
        ("teacher_mean_entropy_norm", "H(mean)/lnK"),
        ("teacher_entropy_norm", "H/lnK"),
    ):
        if key in ev:
            parts.append(f"{label} {ev[key]:.3g}")
    spectra = (r.result or {}).get("spectra") or []
    if spectra:
        last = spectra[-1]
        parts.append(f"eval-set RankMe {last['rankme']:.1f} of {len(last['eigenvalues'])} dims")
    return "; ".join(parts)


def _feature_note(r: RunReport) -> str:
    return "" if r.run.spec.features == "cls" else f" ({r.run.spec.features})"


def summary_table(reports: list[RunReport]) -> str:
    head = (
        "| run | expected | verdict | since it. | watchdog fired | kNN top-1 | linear top-1 | "
        "random init kNN / linear | reproduced | numbers |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in reports:
        result = r.result or {}
        status = result.get("status", "not run")
        verdict = r.verdict.kind + (f" ({r.verdict.mode})" if r.verdict.mode else "")
        if r.comparison is not None and r.run.spec.expect in COMPARISONS and r.comparison.delta is not None:
            verdict += f"; {r.comparison.outcome} ({r.comparison.delta:+.1f})"
        if status not in ("finished", "stopped", "diverged"):
            state = "not finished" if status == "not run" and r.trace.records else status
            verdict = f"{verdict} [run {state}]"
        base = r.baseline or {}
        mark = "**yes**" if r.reproduced and status != "not run" else "no"
        lines.append(
            f"| `{r.run.label}` | {r.run.spec.expect} | {verdict} | {r.verdict.since if r.verdict.since is not None else '-'} | "
            f"{r.watchdog.fired_at if r.watchdog.fired_at is not None else 'no'} | "
            f"{_pct(result.get('knn', {}).get('top1'))}{_feature_note(r)} | {_pct(result.get('linear', {}).get('top1'))} | "
            f"{_pct(base.get('knn', {}).get('top1'))} / {_pct(base.get('linear', {}).get('top1'))} | {mark} | "
            f"{_evidence_text(r)} |"
        )
    return "\n".join(lines)


def render(plan: LabPlan, reports: list[RunReport], figures: list[tuple[str, str]]) -> str:
    m = plan.matrix
    done = sum(1 for r in reports if r.result)
    seconds = [(r.result or {}).get(k) or 0.0 for r in reports for k in ("train_seconds", "eval_seconds")]
    reproduced = sum(1 for r in reports if r.result and r.reproduced)
    lines = [
        f"# Collapse lab: {m.name}",
        "",
        m.description.strip(),
        "",
        f"Matrix `{plan.source.name}`: {len(reports)} runs of {m.iterations} iterations each "
        f"(data {', '.join(m.data)}; measurements every {m.measurements.every} iterations). "
        f"{done} of {len(reports)} runs done; **{reproduced} of {done} expected findings reproduced**. "
        f"Training and evaluation took {sum(seconds) / 60:.0f} minutes in total (sum over the runs done here).",
        "",
        "## Summary",
        "",
        summary_table(reports),
        "",
        "kNN: top-1 %, k = {k}, cosine, on the evaluated network's CLS (or its mean patch token where the "
        "column says avgpool); linear: DINOv2's linear-probe grid; "
        "both on the final checkpoint. Verdict rules and thresholds: `dinolite/lab/verdict.py` and the matrix's "
        "`verdict:` section; the watchdog column replays each run's own `monitor.thresholds` over its log. "
        "A run expected to be better / worse than / on par with its reference is judged on the final {metric} "
        "top-1 against the reference's, with a margin of {margin:g} points.".format(
            k=m.measurements.knn_k, metric=m.verdict.comparison_metric, margin=m.verdict.comparison_margin
        ),
        "",
        "## Runs",
        "",
    ]
    for r in reports:
        overrides = " ".join(r.run.spec.overrides) or "(preset as is)"
        lines.append(
            f"- `{r.run.label}`: `{r.run.spec.preset}` {overrides}. Expected: {r.run.spec.expect}. "
            f"{r.run.spec.why.strip()} Watchdog: {r.watchdog.message}."
        )
    lines += ["", "## Figures", ""]
    for filename, caption in figures:
        lines += [f"### {caption}", "", f"![{caption}]({filename})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(plan: LabPlan) -> Path:
    """Figures and ``README.md`` under ``plan.report_dir``; returns the page's path."""
    out = plan.report_dir
    out.mkdir(parents=True, exist_ok=True)
    reports = collect(plan)
    figures = []
    plot_std(reports, out / "std.png")
    figures.append(("std.png", "Std of the L2-normalised output over training (SimSiam Fig. 2)"))
    if plot_spectra(reports, out / "spectra.png"):
        figures.append(("spectra.png", "Singular value spectra (Jing et al. 2021)"))
    plot_rankme(reports, out / "rankme.png")
    figures.append(("rankme.png", "RankMe over training"))
    if plot_teacher(reports, out / "teacher.png"):
        figures.append(("teacher.png", "Teacher entropy and KL (DINO's centering / sharpening)"))
    plot_loss(reports, out / "loss.png")
    figures.append(("loss.png", "Training loss"))
    if plot_comparison(reports, out / "comparison.png"):
        figures.append(("comparison.png", "Accuracy against the reference (Wang et al. 2022's asymmetries)"))
    page = out / REPORT_FILE
    write_text_atomic(page, render(plan, reports, figures))
    return page
