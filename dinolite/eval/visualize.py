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

The figures are drawn by :mod:`dinolite.eval.figures` (matplotlib, the ``viz`` extra); the command line
(``dinolite-visualize``) is at the end of this file.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from dinolite.cli_help import DefaultsHelpFormatter
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.figures import save_attention_grid, save_pca_grid, save_spectrum_plot
from dinolite.eval.transforms import build_eval_transform
from dinolite.io import write_text_atomic
from dinolite.monitor import metrics

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Verdict rules of the collapse report (stated in the report itself).
COMPLETE_COLLAPSE_STD_RATIO = 0.05  # std * sqrt(D): ~1 for well spread features
COMPLETE_COLLAPSE_RANKME = 1.5
DIMENSIONAL_COLLAPSE_RANKME_RATIO = 0.05  # RankMe / min(N, D)


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def list_images(sources: Sequence[str]) -> list[Path]:
    """Image files from files, folders (searched recursively) and glob patterns, in a stable order."""
    found: list[Path] = []
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
        found.extend(matches)
    return found


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
    if std_ratio < COMPLETE_COLLAPSE_STD_RATIO or rank < COMPLETE_COLLAPSE_RANKME:
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
    chunks = [model.forward_features(images[i : i + batch_size])["x_norm_clstoken"].float() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


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


def visualize(
    model: nn.Module,
    image_paths: Sequence[Path],
    output_dir: Path,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    max_grid_images: int = 8,
    foreground_threshold: Optional[float] = None,
    spectrum_features: Optional[Tensor] = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    title: str = "",
) -> VisualizeOutputs:
    """Attention grid and PCA image for the first ``max_grid_images`` images; spectrum + report for all.

    ``spectrum_features`` (``(N, D)`` CLS features of a data set) replaces the images' own CLS features
    for the spectrum and report when given.
    """
    if size % int(model.patch_size):
        raise ValueError(f"--size {size} is not a multiple of the backbone's patch size {model.patch_size}")
    output_dir = Path(output_dir)
    images = load_images(image_paths, size)
    inputs = normalize(images, mean, std).to(device)
    grid = slice(0, max_grid_images)
    attention = cls_attention_maps(model, inputs[grid]).cpu()
    rgb, _ = pca_rgb(patch_features(model, inputs[grid]).cpu(), foreground_threshold)
    features = spectrum_features if spectrum_features is not None else cls_features(model, inputs, batch_size).cpu()
    report = collapse_report(features)
    names = [p.name for p in image_paths[grid]]
    return VisualizeOutputs(
        attention_png=save_attention_grid(images[grid], attention, output_dir / "attention.png", names),
        pca_png=save_pca_grid(images[grid], rgb, output_dir / "pca.png"),
        spectrum_png=save_spectrum_plot(report, output_dir / "spectrum.png", title),
        report_json=write_text_atomic(output_dir / "collapse_report.json", json.dumps(report.to_dict(), indent=2) + "\n"),
        report=report,
    )


def dataset_cls_features(
    model: nn.Module, source: Sequence[str], transform: Callable, batch_size: int, device: torch.device | str
) -> Tensor:
    """CLS features of every image of a data set (image folder or shards), via the eval pipeline."""
    from dinolite.eval.datasets import build_labelled_dataset
    from dinolite.eval.features import extract_features

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


# --------------------------------------------------------------------------------------------------
# Command line: dinolite-visualize / python -m dinolite.eval.visualize / python eval/visualize.py
# --------------------------------------------------------------------------------------------------

CLI_DESCRIPTION = """Attention maps, PCA feature images, embedding spectrum and a collapse report for a backbone.

    dinolite-visualize --backbone output/demo --images IMG_DIR_OR_FILES... --output vis/

Writes attention.png (CLS self-attention of the last block, per head, over each image), pca.png (first
three PCA components of the patch features as RGB), spectrum.png (sorted log singular values of the
feature covariance, with the verdict) and collapse_report.json.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=CLI_DESCRIPTION, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--backbone", required=True, help="training run / checkpoint directory (teacher) or exported file")
    parser.add_argument("--images", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="directory for the PNGs and the JSON report")
    parser.add_argument("--size", type=int, default=None, help="square input size, a multiple of the patch size (default: training crop size)")
    parser.add_argument("--max-grid-images", type=int, default=8, help="images shown in the attention / PCA grids")
    parser.add_argument("--foreground-threshold", type=float, default=None, help="keep patches whose first PCA component (0..1) exceeds this")
    parser.add_argument("--dataset", nargs="+", default=None, help="image folder or shards for the spectrum (default: the --images)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--mean", type=float, nargs=3, default=None, help="normalisation mean (default: the backbone's)")
    parser.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std (default: the backbone's)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    image_paths = list_images(args.images)
    model = load_any_backbone(args.backbone, map_location=device)
    spec = getattr(model, "spec", None)
    size = args.size or int(getattr(spec, "train_img_size", None) or getattr(spec, "img_size", None) or 224)
    mean = tuple(args.mean or (spec.mean if spec else (0.485, 0.456, 0.406)))
    std = tuple(args.std or (spec.std if spec else (0.229, 0.224, 0.225)))
    spectrum_features = None
    if args.dataset:
        transform = build_eval_transform(size, size, mean, std, patch_size=int(model.patch_size))
        spectrum_features = dataset_cls_features(model, args.dataset, transform, args.batch_size, device)
    outputs = visualize(
        model,
        image_paths,
        Path(args.output),
        size=size,
        mean=mean,
        std=std,
        max_grid_images=args.max_grid_images,
        foreground_threshold=args.foreground_threshold,
        spectrum_features=spectrum_features,
        batch_size=args.batch_size,
        device=device,
        title=Path(args.backbone).name,
    )
    r = outputs.report
    print(
        f"{r.num_samples} images, dim {r.dim}: std*sqrt(D) {r.std_ratio:.3f}, RankMe {r.rankme:.1f} "
        f"({100 * r.rankme_ratio:.1f}% of {min(r.num_samples, r.dim)}) -> {r.verdict}"
    )
    for path in (outputs.attention_png, outputs.pca_png, outputs.spectrum_png, outputs.report_json):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
