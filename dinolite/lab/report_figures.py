"""The PNG figures of the lab's report, in the shapes of the papers' figures (each is described in
:mod:`dinolite.lab.report`): matplotlib's object API (no pyplot state, no display), written atomically.
matplotlib is the ``viz`` extra: :func:`require_matplotlib` checks for it before any training.
"""

from __future__ import annotations

import math
from pathlib import Path

from dinolite.extras import optional_import
from dinolite.lab.evaluate import evaluated_spectra
from dinolite.lab.matrix import COMPARISONS
from dinolite.lab.run_reports import RunReport
from dinolite.lab.traces import CHANNELS

_PURPOSE = "the collapse lab's report figures (launch/lab.py)"
DPI = 72  # small PNGs: the example report is committed


def require_matplotlib() -> None:
    """Fail before any training when the report could not be drawn (matplotlib is the ``viz`` extra)."""
    optional_import("matplotlib.figure", extra="viz", purpose=_PURPOSE)


def Figure(**kwargs):  # noqa: N802 - stands for matplotlib's class
    """A matplotlib ``Figure`` (the object API: no pyplot state, no display backend needed)."""
    return optional_import("matplotlib.figure", extra="viz", purpose=_PURPOSE).Figure(**kwargs)


def colormap(name: str):
    return optional_import("matplotlib", extra="viz", purpose=_PURPOSE).colormaps[name]


def _colors(n: int) -> list:
    cmap = colormap("tab10" if n <= 10 else "tab20")
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
    save_figure(fig, path)


def plot_rankme(reports: list[RunReport], path: Path) -> None:
    fig, axes = _channel_panels(reports, "rankme_ratio", "RankMe / min(N, D)")
    for ax in axes:
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("effective rank ratio")
    _figure_legend(fig, axes)
    save_figure(fig, path)


def _plot_if_logged(reports: list[RunReport], stat: str, title: str, path: Path) -> bool:
    """Every run's ``stat`` per channel, when at least one run logged it (older runs have no such series)."""
    if not any(r.trace.channel(channel, stat) for r in reports for channel in CHANNELS):
        return False
    fig, axes = _channel_panels(reports, stat, title)
    axes[0].set_ylabel(title)
    _figure_legend(fig, axes)
    save_figure(fig, path)
    return True


def plot_lidar(reports: list[RunReport], path: Path) -> bool:
    """LiDAR over iterations (Thilak et al. 2023); False (nothing drawn) when no run logged it."""
    return _plot_if_logged(reports, "lidar", "LiDAR", path)


def plot_alpha_req(reports: list[RunReport], path: Path) -> bool:
    """alpha-ReQ over iterations (Agrawal et al. 2022); False (nothing drawn) when no run logged it."""
    return _plot_if_logged(reports, "alpha_req", "alpha-ReQ", path)


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
        cmap = colormap("viridis")
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
    save_figure(fig, path)
    return True


def plot_teacher(reports: list[RunReport], path: Path) -> bool:
    panels = [
        ("teacher_entropy_norm", "H(teacher) / ln K (per image)"),
        ("teacher_mean_entropy_norm", "H(batch-mean teacher) / ln K"),
        ("student_teacher_kl", "KL(teacher || student) (nats)"),
        ("teacher_prototypes_used", "prototypes some image is assigned to"),
    ]
    if not any(r.trace.teacher(name) for r in reports for name, _ in panels):
        return False
    fig = Figure(figsize=(17, 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (name, title) in zip(axes, panels):
        for color, r in zip(_colors(len(reports)), reports):
            s = r.trace.teacher(name)
            if s:
                ax.plot(s.iterations, s.values, color=color, label=r.run.label, lw=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
    _figure_legend(fig, axes)
    save_figure(fig, path)
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
    save_figure(fig, path)


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
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically (also for the figures of :mod:`dinolite.lab.register_artifacts` and :mod:`dinolite.lab.stepwise`)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")  # keeps a legend placed outside the axes
    tmp.replace(path)  # atomic: a reader never sees half a PNG
