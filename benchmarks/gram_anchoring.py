"""Gram anchoring on the digits demo: global (kNN) and dense (patch-similarity locality) quality of the
teacher at each kept checkpoint of runs with and without the Gram term (issue 28).

For each run folder (``dinolite-train --config demo_gram`` and the same with ``gram.use_loss=false``) and
each checkpoint it kept, on the digits it trained on (the run's ``data/train`` and ``data/val`` folders):

* kNN top-1 (k = 20, cosine, T = 0.07) of the teacher's CLS token, val against train (images through the
  evaluation transform, as the end-of-run kNN);
* patch-similarity locality of the teacher's final-norm patch tokens on the val images: per image the
  cosine similarities of its patches, ``near`` = their mean over 4-neighbour pairs of the patch grid,
  ``all`` = their mean over every pair of distinct patches, ``locality = near - all`` (how much more alike
  neighbouring patches are than patches in general: DINOv3's "noisy similarity maps" lower it); the mean
  over the images;
* the same similarities' mean over ink-ink patch pairs minus ink-background pairs (``ink_contrast``): do
  the patch features separate the digit's strokes from the background (an ink patch: mean pixel above
  the median of the image).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/gram_anchoring.py /tmp/runs/gram /tmp/runs/nogram --output gram.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dinolite.config import load_config  # noqa: E402
from dinolite.eval.backbone import load_any_backbone  # noqa: E402
from dinolite.eval.knn import knn_classify  # noqa: E402
from dinolite.eval.transforms import build_eval_transform  # noqa: E402


def load_folder(folder: Path, size: int, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``folder/<class>/*.png`` through the evaluation transform (the end-of-run kNN's: resize,
    centre crop to ``size``, normalise) as an (N, 3, size, size) tensor, and its labels."""
    transform = build_eval_transform(size, mean=mean, std=std)
    paths = sorted(folder.glob("*/*.png"))
    images = [transform(Image.open(path).convert("RGB")) for path in paths]
    return torch.stack(images), torch.tensor([int(path.parent.name) for path in paths])


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cls, patches = [], []
    for chunk in images.split(256):
        out = backbone.forward_features(chunk)
        cls.append(out["x_norm_clstoken"])
        patches.append(out["x_norm_patchtokens"])
    return torch.cat(cls), torch.cat(patches)


def neighbour_mask(side: int) -> torch.Tensor:
    """(P, P) bool: patches i, j are 4-neighbours on a side x side row-major grid."""
    rows, cols = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
    distance = (rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()
    return distance == 1


def locality(patches: torch.Tensor, images: torch.Tensor, patch_size: int) -> dict[str, float]:
    """The dense measures of the module docstring, averaged over the images."""
    n, p, _ = patches.shape
    side = round(p**0.5)
    x = F.normalize(patches.double(), dim=-1)
    sim = x @ x.transpose(1, 2)
    off_diagonal = ~torch.eye(p, dtype=torch.bool)
    near = sim[:, neighbour_mask(side)].view(n, -1).mean(1)
    every = sim[:, off_diagonal].view(n, -1).mean(1)
    # ink patches: mean grey value above the image's median patch value
    grey = F.avg_pool2d(images.mean(1, keepdim=True), patch_size).flatten(1)
    ink = grey > grey.median(dim=1, keepdim=True).values
    contrast = []
    for i in range(n):
        pair_ink = ink[i][:, None] & ink[i][None] & off_diagonal
        pair_mixed = ink[i][:, None] & ~ink[i][None]
        if pair_ink.any() and pair_mixed.any():
            contrast.append(float(sim[i][pair_ink].mean() - sim[i][pair_mixed].mean()))
    return {
        "near": float(near.mean()),
        "all": float(every.mean()),
        "locality": float((near - every).mean()),
        "ink_contrast": float(np.mean(contrast)),
    }


def measure_run(run: Path) -> list[dict]:
    cfg = load_config(str(run / "config.yaml"), unknown_sections="keep")
    mean, std = list(cfg.crops.mean), list(cfg.crops.std)
    size = cfg.crops.global_crops_size
    train_x, train_y = load_folder(run / "data" / "train", size, mean, std)
    val_x, val_y = load_folder(run / "data" / "val", size, mean, std)
    rows = []
    for checkpoint in sorted((run / "checkpoints").glob("*")):
        if not checkpoint.is_dir():
            continue
        backbone = load_any_backbone(checkpoint, network="teacher").eval()
        train_cls, _ = features(backbone, train_x)
        val_cls, val_patches = features(backbone, val_x)
        knn = knn_classify(train_cls, train_y, val_cls, val_y, num_classes=10, ks=(20,))
        row = {"run": run.name, "checkpoint": checkpoint.name, "knn_top1": knn["top1"]}
        row.update(locality(val_patches, val_x, cfg.student.patch_size))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with checkpoints/ and data/)")
    parser.add_argument("--output", type=Path, required=True, help="JSON file for every row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for run in args.runs for row in measure_run(run)]
    args.output.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
