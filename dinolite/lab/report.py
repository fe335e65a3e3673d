"""The lab's report: one Markdown page with PNG figures in the shapes of the papers' figures.

- ``std.png``: std of the L2-normalised output over iterations, one line per run, one panel per channel
  (backbone, projector, predictor; SimSiam, Chen & He 2021, Fig. 2). Plotted as std x sqrt(d) so methods
  of different widths share an axis: 1 is the isotropic level (std = 1/sqrt(d)), 0 is complete collapse.
- ``spectra.png``: log10 eigenvalues of the embedding covariance, sorted, one panel per run side by side,
  one line per checkpoint (Jing et al. 2021, Fig. 2/4 shape): dimensional collapse is a tail that falls
  off a cliff.
- ``rankme.png``: RankMe / min(N, D) over iterations (Garrido et al. 2023).
- ``lidar.png`` and ``alpha_req.png`` (when a run logged them): LiDAR over the views of each image
  (Thilak et al. 2023) and the covariance spectrum's power-law exponent (Agrawal et al. 2022) over
  iterations, one panel per channel.
- ``teacher.png``: teacher entropy (per image and of the batch mean, / ln K) and the student-teacher KL,
  for methods with a teacher distribution (DINO, MSN): no centering -> one prototype, no sharpening ->
  uniform.
- ``loss.png``: the training loss of every run.
- ``comparison.png`` (runs expected to be better / worse than / on par with their reference, Wang et al.
  2022's asymmetry study): each run's final top-1 minus its reference's, with the "on par" band shaded.
- a table: expected finding, verdict (which kind, since when), the watchdog's first alert, kNN and
  linear top-1 of the evaluated network against random init, and whether the finding is reproduced,
  with the numbers behind it.

The optional sections (:data:`OPTIONAL_SECTIONS`, each only when the matrix measured its data; text before
the runs, figures after the report's own), in page order:

- RankMe against kNN (``measurements.rank_correlation``; Garrido et al. 2023, Fig. 4): a Spearman rank
  correlation over the finished runs.
- "Stepwise learning" with ``stepwise.png`` (``measurements.eigenvalues``; Simon et al. 2023, Fig. 1):
  :mod:`dinolite.lab.stepwise`.
- "Register artifacts" with ``token_norms.png`` and ``attention_maps.png`` (``measurements.register_artifacts``;
  Darcet et al. 2024, Fig. 3 and Fig. 1/7): drawn by :mod:`dinolite.lab.register_artifacts` from each run's
  final checkpoint.

The runs are read back and judged by :mod:`dinolite.lab.run_reports` and the figures drawn by
:mod:`dinolite.lab.report_figures`; this module writes the page around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from dinolite.io import write_text_atomic
from dinolite.lab.matrix import COMPARISONS
from dinolite.lab.matrix_plan import LabPlan
from dinolite.lab.register_artifacts import register_artifacts_section
from dinolite.lab.report_figures import (
    plot_alpha_req,
    plot_comparison,
    plot_lidar,
    plot_loss,
    plot_rankme,
    plot_spectra,
    plot_std,
    plot_teacher,
)
from dinolite.lab.report_sections import ReportSection, SectionBuilder, build_sections
from dinolite.lab.run_reports import RunReport, collect
from dinolite.lab.stepwise import stepwise_section

REPORT_FILE = "README.md"


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
        ("backbone_lidar", "backbone LiDAR"),
        ("backbone_alpha_req", "backbone alpha-ReQ"),
        ("teacher_mean_entropy_norm", "H(mean)/lnK"),
        ("teacher_entropy_norm", "H/lnK"),
        ("teacher_prototypes_used", "prototypes used"),
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


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties get their average rank);
    nan when either list is constant."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"spearman needs two lists of the same length >= 2, got {len(xs)} and {len(ys)}")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var > 0 else float("nan")


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation_text(reports: list[RunReport]) -> str:
    """RankMe against kNN over the finished runs (Garrido et al. 2023, Fig. 4), or why it is missing."""
    pairs = [
        (r.result["spectra"][-1]["rankme"], r.result["knn"]["top1"])
        for r in reports
        if r.result and r.result.get("spectra") and (r.result.get("knn") or {}).get("top1") is not None
    ]
    if len(pairs) < 3:
        return f"RankMe against kNN: {len(pairs)} finished run(s) with both, 3 needed for a rank correlation."
    rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return (
        f"RankMe against kNN (Garrido et al. 2023, Fig. 4): Spearman rank correlation of the final eval-set "
        f"RankMe with the kNN top-1 over {len(pairs)} runs: **{rho:.2f}**."
    )


def rank_correlation_section(plan: LabPlan, reports: list[RunReport], out_dir: Path) -> Optional[ReportSection]:
    """:func:`rank_correlation_text` when the matrix asks (``measurements.rank_correlation``); no figure."""
    return ReportSection(rank_correlation_text(reports)) if plan.matrix.measurements.rank_correlation else None


# The report's optional sections, in page order (see the module docstring).
OPTIONAL_SECTIONS: tuple[SectionBuilder, ...] = (rank_correlation_section, stepwise_section, register_artifacts_section)


def _replaced_note(plan: LabPlan) -> str:
    """Says when ``--data`` replaced the matrix's own data (the report names the set its runs saw)."""
    return f", given with --data in place of the matrix's {', '.join(plan.replaced_data)}" if plan.replaced_data else ""


def render(
    plan: LabPlan, reports: list[RunReport], figures: list[tuple[str, str]], sections: Sequence[ReportSection] = ()
) -> str:
    """The page; each of ``sections`` puts its text between the summary and the runs, and its figures after
    ``figures``."""
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
        f"(data {', '.join(m.data)}{_replaced_note(plan)}; measurements every {m.measurements.every} iterations). "
        f"{done} of {len(reports)} runs done; **{reproduced} of {done} expected findings reproduced**. "
        f"Training and evaluation took {sum(seconds) / 60:.0f} minutes in total (sum over the runs done here).",
        "",
        "## Summary",
        "",
        summary_table(reports),
        "",
        "kNN: top-1 %, k = {k}, cosine, on the evaluated network's CLS (or its mean patch token where the "
        "column says avgpool); linear: DINOv2's linear-probe grid; "
        "both on the final checkpoint. Verdict rules: the collapse rules of `dinolite/monitor/collapse_rules.py` "
        "(docs/monitor.md#collapse-rules) as `dinolite/lab/verdict.py` reads them, with the thresholds of the "
        "matrix's `verdict:` section (a run's own `verdict:` entries, listed under Runs, replace them for that "
        "run); the watchdog column replays each run's own watchdog rules (its method's and `monitor.thresholds`) "
        "over its log. "
        "A run expected to be better / worse than / on par with its reference is judged on the final {metric} "
        "top-1 against the reference's, with a margin of {margin:g} points.".format(
            k=m.measurements.knn_k, metric=m.verdict.comparison_metric, margin=m.verdict.comparison_margin
        ),
    ]
    for section in sections:
        lines += ["", section.text.rstrip()]
    lines += ["", "## Runs", ""]
    for r in reports:
        overrides = " ".join(r.run.spec.overrides) or "(preset as is)"
        thresholds = ", ".join(f"{key} {value:g}" for key, value in r.run.spec.verdict.items())
        own_rules = f" Verdict thresholds for this run: {thresholds}." if thresholds else ""
        lines.append(
            f"- `{r.run.label}`: `{r.run.spec.preset}` {overrides}. Expected: {r.run.spec.expect}. "
            f"{r.run.spec.why.strip()}{own_rules} Watchdog: {r.watchdog.message}."
        )
    lines += ["", "## Figures", ""]
    for filename, caption in [*figures, *(figure for section in sections for figure in section.figures)]:
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
    if plot_lidar(reports, out / "lidar.png"):
        figures.append(("lidar.png", "LiDAR over training (Thilak et al. 2023)"))
    if plot_alpha_req(reports, out / "alpha_req.png"):
        figures.append(("alpha_req.png", "alpha-ReQ over training (Agrawal et al. 2022)"))
    if plot_teacher(reports, out / "teacher.png"):
        figures.append(("teacher.png", "Teacher entropy and KL (DINO's centering / sharpening)"))
    plot_loss(reports, out / "loss.png")
    figures.append(("loss.png", "Training loss"))
    if plot_comparison(reports, out / "comparison.png"):
        figures.append(("comparison.png", "Accuracy against the reference (Wang et al. 2022's asymmetries)"))
    sections = build_sections(OPTIONAL_SECTIONS, plan, reports, out)
    page = out / REPORT_FILE
    write_text_atomic(page, render(plan, reports, figures, sections))
    return page
