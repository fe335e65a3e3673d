"""The figures of ``dinolite-visualize``: attention grids, PCA colour grids, the embedding spectrum.

matplotlib (the ``viz`` extra) draws them with the Agg backend; files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from dinolite.extras import optional_import
from dinolite.io import write_atomic

if TYPE_CHECKING:  # the report type lives with the code that computes it
    from dinolite.eval.visualize import CollapseReport


def _pyplot():
    # matplotlib is optional (the ``viz`` extra) and slow to import: loaded on the first figure
    matplotlib = optional_import("matplotlib", extra="viz", purpose="drawing figures (dinolite-visualize)")
    matplotlib.use("Agg")  # no display needed
    return optional_import("matplotlib.pyplot", extra="viz", purpose="drawing figures (dinolite-visualize)")


def _save_figure(fig, path: Path) -> Path:
    """Write a figure atomically (temp + rename) and close it."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def _upsample(maps: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(…, h, w) -> (…, H, W) nearest-neighbour, so each patch stays a visible square."""
    lead = maps.shape[:-2]
    up = torch.nn.functional.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=size, mode="nearest")
    return up.reshape(*lead, *size).numpy()


def save_attention_grid(images: Tensor, attention: Tensor, path: Path, names: Sequence[str] = ()) -> Path:
    """One row per image: the image, then each head's CLS attention over it, then the head mean."""
    plt = _pyplot()
    b, heads = attention.shape[:2]
    size = tuple(images.shape[-2:])
    maps = _upsample(attention, size)  # (B, heads, H, W)
    cols = heads + 2
    fig, axes = plt.subplots(b, cols, figsize=(1.8 * cols, 1.8 * b), squeeze=False)
    for i in range(b):
        picture = images[i].permute(1, 2, 0).numpy()
        panels = [None, *range(heads), "mean"]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(picture)
            if panel is not None:
                heat = maps[i].mean(axis=0) if panel == "mean" else maps[i, panel]
                ax.imshow(heat, cmap="inferno", alpha=0.6)
            if i == 0:
                ax.set_title("image" if panel is None else ("mean" if panel == "mean" else f"head {panel}"), fontsize=8)
            ax.axis("off")
        if names:
            axes[i, 0].text(0, -2, str(names[i])[-24:], fontsize=6, va="bottom")
    return _save_figure(fig, path)


def save_pca_grid(images: Tensor, rgb: Tensor, path: Path) -> Path:
    """Two rows per column: the image and its PCA colours."""
    plt = _pyplot()
    b = images.shape[0]
    colours = _upsample(rgb.permute(0, 3, 1, 2), tuple(images.shape[-2:])).transpose(0, 2, 3, 1)
    fig, axes = plt.subplots(2, b, figsize=(1.8 * b, 3.6), squeeze=False)
    for i in range(b):
        axes[0, i].imshow(images[i].permute(1, 2, 0).numpy())
        axes[1, i].imshow(np.clip(colours[i], 0.0, 1.0))
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[1, 0].set_title("PCA 1-3 -> RGB", fontsize=8, loc="left")
    return _save_figure(fig, path)


def save_spectrum_plot(report: "CollapseReport", path: Path, title: str = "") -> Path:
    """Sorted log10 covariance eigenvalues, with std / RankMe / verdict in the title."""
    plt = _pyplot()
    spectrum = np.maximum(np.asarray(report.spectrum), 1e-12)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(spectrum) + 1), np.log10(spectrum), marker=".", markersize=3)
    ax.set_xlabel("singular value rank")
    ax.set_ylabel("log10 singular value of covariance")
    ax.grid(alpha=0.3)
    ax.set_title(
        (f"{title}\n" if title else "")
        + f"N={report.num_samples} D={report.dim}  std*sqrt(D)={report.std_ratio:.3f}  "
        f"RankMe={report.rankme:.1f}  -> {report.verdict}",
        fontsize=8,
    )
    return _save_figure(fig, path)
