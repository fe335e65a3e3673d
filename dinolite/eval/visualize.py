"""What a backbone learned, as pictures: CLS attention maps, PCA of patch features, embedding spectrum.

- Attention (Caron et al. 2021, DINO, Fig. 1/3): the last block's softmax attention of the CLS token
  over the patch tokens, one map per head, overlaid on the image. CLS->CLS and CLS->register weights
  are dropped and the rest renormalised, so each head's map is a distribution over patches (sums to 1).
- PCA (Oquab et al. 2023, DINOv2, Fig. 1/10): PCA over the patch features of all images together; the
  first three components are mapped to RGB. With a foreground threshold, patches whose first component
  (scaled to [0, 1]) is above it are kept and a second PCA over those alone gives the colours; the
  background is black.
- Spectrum and collapse report (Jing et al. 2021; Garrido et al. 2023): the sorted log eigenvalues of
  the covariance of L2-normalised CLS features of a set of images, with std / RankMe and a verdict.

``eval/visualize.py`` is the CLI; everything here takes tensors and paths.
"""

from __future__ import annotations

import glob
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from dinolite.eval.datasets import build_labelled_dataset
from dinolite.eval.features import extract_features
from dinolite.extras import optional_import
from dinolite.io import write_atomic, write_text_atomic
from dinolite.monitor import metrics

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

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
GRID_COLUMNS = 8  # PCA figure wraps after this many images


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def list_images(sources: Sequence[str]) -> list[Path]:
    """Image files from files, folders (searched recursively) and glob patterns, in a stable order."""
    return [path for group in list_image_groups(sources) for path in group]


def list_image_groups(sources: Sequence[str]) -> list[list[Path]]:
    """The image files of each source (file, folder or glob pattern), one list per source."""
    found: list[list[Path]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        matches = [p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not matches:
            raise FileNotFoundError(f"--images {source}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found there")
        found.append(matches)
    return found


def pick_grid_images(groups: Sequence[Sequence], limit: Optional[int]) -> list:
    """Up to ``limit`` images (all when ``limit`` is None or 0) taken in turn from each source, so every
    folder or file asked for appears in the grids, not just the first folder's first files."""
    total = sum(len(g) for g in groups)
    limit = total if not limit else min(limit, total)
    picked: list = []
    for rank in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if rank < len(group) and len(picked) < limit:
                picked.append(group[rank])
    return picked


def load_images(paths: Sequence[Path], size: int) -> Tensor:
    """uint8 ``(B, 3, size, size)``: shorter side resized to ``size`` (bicubic), centre crop."""
    geometry = v2.Compose(
        [v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(size)]
    )
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                tensor = v2.functional.to_image(img.convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the image: {exc}") from exc
        images.append(geometry(tensor))
    return torch.stack(images)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images -> float, scaled to [0, 1] and normalised per channel."""
    x = images.float() / 255.0
    mean_t = torch.tensor(list(mean), dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(list(std), dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _patch_grid(model: nn.Module, images: Tensor) -> tuple[int, int]:
    patch = int(model.patch_size)
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the backbone's patch size {patch}")
    return height // patch, width // patch


# --------------------------------------------------------------------------------------------------
# Attention and PCA
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def cls_attention_maps(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, heads, h, w)`` CLS->patch attention of the last block, each map renormalised to sum to 1.

    ``images`` are normalised float ``(B, 3, H, W)`` with H, W multiples of the patch size.
    """
    h, w = _patch_grid(model, images)
    attention = model.get_last_selfattention(images).float()  # (B, heads, T, T)
    first_patch = 1 + int(getattr(model, "num_register_tokens", 0))
    cls_to_patches = attention[:, :, 0, first_patch:]
    if cls_to_patches.shape[-1] != h * w:
        raise ValueError(f"attention covers {cls_to_patches.shape[-1]} patch tokens, expected {h}x{w}")
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
    return cls_to_patches.reshape(*cls_to_patches.shape[:2], h, w)


@torch.no_grad()
def patch_features(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, h, w, D)`` normalised patch tokens of the last block."""
    h, w = _patch_grid(model, images)
    tokens = model.forward_features(images)["x_norm_patchtokens"].float()
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


def _principal_components(x: Tensor, n_components: int) -> Tensor:
    """Projections ``(N, n_components)`` of the centred rows on the top principal axes.

    Each axis's sign is fixed so that its largest-magnitude projection is positive: SVD signs are
    arbitrary, and a fixed rule keeps colours stable between runs.
    """
    centred = x.double() - x.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projections = centred @ vh[:n_components].T
    if projections.shape[1] < n_components:  # fewer samples/dims than components: pad with zeros
        pad = projections.new_zeros(projections.shape[0], n_components - projections.shape[1])
        projections = torch.cat([projections, pad], dim=1)
    peak = projections.gather(0, projections.abs().argmax(dim=0, keepdim=True))
    return projections * torch.where(peak < 0, -1.0, 1.0)


def _min_max(x: Tensor) -> Tensor:
    """Scale each column to [0, 1] (constant columns become 0)."""
    low, high = x.min(dim=0).values, x.max(dim=0).values
    return (x - low) / (high - low).clamp_min(1e-12)


def pca_rgb(features: Tensor, foreground_threshold: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """PCA of patch features ``(B, h, w, D)`` -> RGB ``(B, h, w, 3)`` in [0, 1] and a foreground mask.

    Without a threshold every patch is foreground and the first three components are the colours.
    With one, the first component decides foreground (scaled value > threshold). Which end of it is
    the object is not fixed by PCA: we take the end the image border patches are *not* on, since
    objects are usually away from the border.
    """
    b, h, w, d = features.shape
    flat = features.reshape(-1, d)
    if foreground_threshold is None:
        rgb = _min_max(_principal_components(flat, 3)).float()
        return rgb.reshape(b, h, w, 3), torch.ones(b, h, w, dtype=torch.bool)
    if not 0.0 <= foreground_threshold <= 1.0:
        raise ValueError(f"--foreground-threshold must be in [0, 1], got {foreground_threshold}")
    first = _min_max(_principal_components(flat, 1))[:, 0].reshape(b, h, w)
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    if first[:, border].mean() > first.mean():
        first = 1.0 - first
    foreground = first > foreground_threshold
    rgb = torch.zeros(b * h * w, 3)
    mask = foreground.reshape(-1)
    if int(mask.sum()) >= 2:
        rgb[mask] = _min_max(_principal_components(flat[mask], 3)).float()
    return rgb.reshape(b, h, w, 3), foreground


# --------------------------------------------------------------------------------------------------
# Spectrum and collapse report
# --------------------------------------------------------------------------------------------------


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


@torch.no_grad()
def cls_features(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """``(B, D)`` normalised CLS features, in batches."""
    chunks = [
        model.forward_features(images[i : i + batch_size])["x_norm_clstoken"].float()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg: no display needed)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The whole visualisation run
# --------------------------------------------------------------------------------------------------


@dataclass
class VisualizeOutputs:
    attention_png: Path
    pca_png: Path
    spectrum_png: Path
    report_json: Path
    report: CollapseReport
    grid_images: int = 0  # how many images the attention / PCA figures show


def visualize(
    model: nn.Module,
    image_paths: Sequence[Path],
    output_dir: Path,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    max_grid_images: Optional[int] = 16,
    foreground_threshold: Optional[float] = None,
    spectrum_features: Optional[Tensor] = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    title: str = "",
) -> VisualizeOutputs:
    """Attention grid and PCA image for ``max_grid_images`` images taken in turn from each entry of
    ``image_paths`` (a list of per-source lists, or one flat list; None or 0: all); the spectrum and
    report use every image.

    ``spectrum_features`` (``(N, D)`` CLS features of a data set) replaces the images' own CLS features
    for the spectrum and report when given.
    """
    if size % int(model.patch_size):
        raise ValueError(f"--size {size} is not a multiple of the backbone's patch size {model.patch_size}")
    output_dir = Path(output_dir)
    groups = (
        [list(g) for g in image_paths]
        if image_paths and not isinstance(image_paths[0], (str, Path))
        else [list(image_paths)]
    )
    every = [Path(p) for g in groups for p in g]
    starts = np.cumsum([0] + [len(g) for g in groups])
    shown = pick_grid_images([list(range(a, a + len(g))) for a, g in zip(starts, groups)], max_grid_images)
    images = load_images(every, size)
    inputs = normalize(images, mean, std).to(device)
    attention = cls_attention_maps(model, inputs[shown]).cpu()
    rgb, _ = pca_rgb(patch_features(model, inputs[shown]).cpu(), foreground_threshold)
    features = spectrum_features if spectrum_features is not None else cls_features(model, inputs, batch_size).cpu()
    report = collapse_report(features)
    names = [every[i].name for i in shown]
    return VisualizeOutputs(
        attention_png=save_attention_grid(images[shown], attention, output_dir / "attention.png", names),
        pca_png=save_pca_grid(images[shown], rgb, output_dir / "pca.png", names),
        spectrum_png=save_spectrum_plot(report, output_dir / "spectrum.png", title),
        report_json=write_text_atomic(
            output_dir / "collapse_report.json", json.dumps(report.to_dict(), indent=2) + "\n"
        ),
        report=report,
        grid_images=len(shown),
    )


def dataset_cls_features(
    model: nn.Module, source: Sequence[str], transform: Callable, batch_size: int, device: torch.device | str
) -> Tensor:
    """CLS features of every image of a data set (image folder or shards), via the eval pipeline."""

    dataset = build_labelled_dataset(source, transform, rank=0, world_size=1, option="--dataset")
    extracted = extract_features(
        lambda x: model.forward_features(x)["x_norm_clstoken"],
        dataset,
        batch_size=batch_size,
        device=device,
        progress=False,
        desc="spectrum",
    )
    return extracted.features


if __name__ == "__main__":
    # `python -m dinolite.eval.visualize` runs the command line, which lives in visualize_cli because it imports
    # this module (a top-level import here would be circular).
    from dinolite.eval.visualize_cli import main

    sys.exit(main())
