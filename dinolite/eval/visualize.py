"""What a backbone learned, as pictures: CLS attention maps, PCA of patch features, embedding spectrum.

The whole visualisation run (:func:`visualize`) and its inputs: image files listed, picked for the
grids, loaded and normalised. The maps are computed in :mod:`dinolite.eval.feature_maps`, the collapse
report (spectrum, std / RankMe and a verdict) in :mod:`dinolite.eval.collapse_verdict`, and the figures
drawn by :mod:`dinolite.eval.visualize_figures`.

``eval/visualize.py`` is the CLI; everything here takes tensors and paths.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from dinolite.data.decode import open_image_file
from dinolite.data.folders import IMAGE_EXTENSIONS
from dinolite.eval.collapse_verdict import CollapseReport, collapse_report
from dinolite.eval.datasets import build_labelled_dataset
from dinolite.eval.feature_maps import cls_attention_maps, patch_features, pca_rgb
from dinolite.eval.features import extract_features
from dinolite.eval.visualize_figures import save_attention_grid, save_pca_grid, save_spectrum_plot
from dinolite.io import write_text_atomic

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
            with open_image_file(path) as img:  # the data path's byte and pixel budgets
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


# --------------------------------------------------------------------------------------------------
# The whole visualisation run
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def cls_features(model: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """``(B, D)`` normalised CLS features, in batches."""
    chunks = [
        model.forward_features(images[i : i + batch_size])["x_norm_clstoken"].float()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


@dataclass
class VisualizeOutputs:
    attention_png: Optional[Path]  # None for a backbone without a CLS token (no CLS attention to map)
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
    has_cls = getattr(model, "cls_token", True) is not None
    attention = cls_attention_maps(model, inputs[shown]).cpu() if has_cls else None
    rgb, _ = pca_rgb(patch_features(model, inputs[shown]).cpu(), foreground_threshold)
    features = spectrum_features if spectrum_features is not None else cls_features(model, inputs, batch_size).cpu()
    report = collapse_report(features)
    names = [every[i].name for i in shown]
    return VisualizeOutputs(
        attention_png=(
            save_attention_grid(images[shown], attention, output_dir / "attention.png", names) if has_cls else None
        ),
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
