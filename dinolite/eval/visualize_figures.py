"""The figures of ``dinolite-visualize`` (matplotlib, Agg: no display needed): the attention grid, the
PCA grid and the spectrum plot, each written atomically; and the kept-patch grid of
``dinolite-attention-segmentation``. matplotlib is the ``viz`` extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from dinolite.eval.collapse_verdict import MIN_VERDICT_SAMPLES, NOT_ENOUGH_SAMPLES, CollapseReport
from dinolite.extras import optional_import
from dinolite.io import write_atomic

GRID_COLUMNS = 8  # PCA figure wraps after this many images


def _pyplot():
    # matplotlib (the ``viz`` extra) is needed for figures only; Agg must be selected before pyplot is imported.
    matplotlib = optional_import("matplotlib", extra="viz", purpose="drawing figures (dinolite-visualize)")
    matplotlib.use("Agg")
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
    # Constrained layout reserves room for every title, so file names and head labels never overlap.
    fig, axes = plt.subplots(b, cols, figsize=(1.8 * cols, 2.0 * b), squeeze=False, layout="constrained")
    for i in range(b):
        picture = images[i].permute(1, 2, 0).numpy()
        panels = [None, *range(heads), "mean"]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(picture)
            if panel is not None:
                heat = maps[i].mean(axis=0) if panel == "mean" else maps[i, panel]
                ax.imshow(heat, cmap="inferno", alpha=0.6)
            if panel is None:  # every row's image is titled with its file name
                ax.set_title(_short_name(names[i]) if names else "image", fontsize=7)
            elif i == 0:  # head labels once, over the first row
                ax.set_title("mean" if panel == "mean" else f"head {panel}", fontsize=7)
            ax.axis("off")
    return _save_figure(fig, path)


# Colours of the mask figure: kept and object (hit), kept only (false alarm), object only (missed).
MASK_COLOURS = {"hit": (0.1, 0.8, 0.2), "kept only": (0.9, 0.15, 0.1), "object only": (0.2, 0.4, 1.0)}


def _mask_overlay(kept: Tensor, objects: Tensor, size: tuple[int, int]) -> np.ndarray:
    """RGBA ``(H, W, 4)``: each patch coloured by :data:`MASK_COLOURS` (transparent where neither)."""
    rgba = torch.zeros(*kept.shape, 4)
    for colour, where in zip(MASK_COLOURS.values(), (kept & objects, kept & ~objects, ~kept & objects)):
        rgba[where] = torch.tensor([*colour, 0.55])
    return _upsample(rgba.permute(2, 0, 1), size).transpose(1, 2, 0)


def save_attention_mask_grid(
    pixels: Tensor, objects: Tensor, kept: Tensor, jaccard: Tensor, path: Path, title: str = ""
) -> Path:
    """One row per image: the image, its object mask at the patch grid, then each head's kept patches over
    the image coloured against the object (green hit, red kept only, blue missed) with its Jaccard index."""
    plt = _pyplot()
    b, heads = kept.shape[:2]
    size = tuple(pixels.shape[-2:])
    cols = heads + 2
    fig, axes = plt.subplots(b, cols, figsize=(1.6 * cols, 1.8 * b), squeeze=False, layout="constrained")
    if title:
        fig.suptitle(title, fontsize=8)
    for i in range(b):
        picture = pixels[i].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[i, 0].imshow(picture)
        axes[i, 1].imshow(_upsample(objects[i].float(), size), cmap="gray", vmin=0, vmax=1)
        for head in range(heads):
            ax = axes[i, head + 2]
            ax.imshow(picture)
            ax.imshow(_mask_overlay(kept[i, head], objects[i], size))
            ax.set_title(f"head {head}: J {100 * float(jaccard[i, head]):.0f}", fontsize=6)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=7)
            axes[i, 1].set_title("object mask", fontsize=7)
        for ax in axes[i]:
            ax.axis("off")
    return _save_figure(fig, path)


def _short_name(name: str, width: int = 18) -> str:
    """A file name that fits over one panel: long names keep their start and end."""
    name = str(name)
    return name if len(name) <= width else f"{name[: width // 2 - 1]}~{name[-(width // 2) :]}"


def save_pca_grid(images: Tensor, rgb: Tensor, path: Path, names: Sequence[str] = ()) -> Path:
    """Each image above its PCA colours, ``GRID_COLUMNS`` images per band of two rows."""
    plt = _pyplot()
    b = images.shape[0]
    colours = _upsample(rgb.permute(0, 3, 1, 2), tuple(images.shape[-2:])).transpose(0, 2, 3, 1)
    cols = min(b, GRID_COLUMNS)
    bands = math.ceil(b / cols)
    fig, axes = plt.subplots(2 * bands, cols, figsize=(1.8 * cols, 3.8 * bands), squeeze=False, layout="constrained")
    fig.suptitle("each image above its first 3 PCA components as RGB", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(b):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        top.imshow(images[i].permute(1, 2, 0).numpy())
        top.set_title(_short_name(names[i]) if names else f"image {i}", fontsize=7)
        bottom.imshow(np.clip(colours[i], 0.0, 1.0))
    return _save_figure(fig, path)


def save_spectrum_plot(report: CollapseReport, path: Path, title: str = "") -> Path:
    """Sorted log10 covariance eigenvalues, with std / RankMe / verdict in the title."""
    plt = _pyplot()
    spectrum = np.maximum(np.asarray(report.spectrum), 1e-12)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(spectrum) + 1), np.log10(spectrum), marker=".", markersize=3)
    ax.set_xlabel("singular value rank")
    ax.set_ylabel("log10 singular value of covariance")
    ax.grid(alpha=0.3)
    ax.set_title(
        (f"{title}\n" if title else "") + f"N={report.num_samples} D={report.dim}  std*sqrt(D)={report.std_ratio:.3f}  "
        f"RankMe={report.rankme:.1f}  -> {report.verdict}"
        + (f" (needs N >= {MIN_VERDICT_SAMPLES})" if report.verdict == NOT_ENOUGH_SAMPLES else ""),
        fontsize=8,
    )
    return _save_figure(fig, path)
