"""Linear semantic segmentation on frozen patch tokens (the DINOv2 "linear" segmentation protocol).

Head: BatchNorm + 1x1 convolution over the patch-token map of the last layer, or of the last 4 layers
concatenated (DINOv2's "+ms"-free "lin" / "lin4" settings); its (h, w) logits are bilinearly upsampled
to the mask size and trained with cross-entropy, pixels labelled 255 ignored.

Data: the ADE20K layout ``ROOT/images/{training,validation}/NAME.{jpg,png}`` and
``ROOT/annotations/{training,validation}/NAME.png`` holding one class id per pixel. With
``reduce_zero_label`` (ADE's "0 = other" convention, as mmsegmentation) 0 becomes 255 (ignored) and
every other id c becomes c - 1.

Inference: ``resize`` (the image is resized to crop x crop, logits resized back to the mask size) or
``slide`` (shorter side resized to the crop, overlapping crop x crop windows at ``stride``, logits
averaged where windows overlap, then resized back).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from dinolite.data.decode import open_image_file
from dinolite.eval.finite import NonFiniteError, check_finite_rows
from dinolite.eval.metrics import confusion_matrix, segmentation_scores
from dinolite.eval.transforms import ToRGBTensor
from dinolite.progress import progress_bar

IGNORE_INDEX = 255
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_MODES = ("L", "P", "I", "I;16")


# ----------------------------------------------------------------------------------------- data


def list_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) paths of one split; every image must have ``annotations/<split>/<stem>.png``."""
    root = Path(root)
    folder = SPLIT_FOLDERS.get(split, split)
    image_dir, mask_dir = root / "images" / folder, root / "annotations" / folder
    for directory in (image_dir, mask_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"--data {root}: missing folder {directory} (expected the ADE20K layout)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"--data {root}: no .jpg/.png images in {image_dir}")
    pairs, orphans = [], []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        (pairs.append((image, mask)) if mask.is_file() else orphans.append(image.name))
    if orphans:
        raise FileNotFoundError(
            f"--data {root}: {len(orphans)} image(s) without a mask in {mask_dir}, e.g. {orphans[:3]} "
            f"(expected {mask_dir / (Path(orphans[0]).stem + '.png')})"
        )
    return pairs


def read_mask(path: Path, reduce_zero_label: bool) -> torch.Tensor:
    """(H, W) int64 class ids; single-channel PNGs only (an RGB colour mask is refused)."""
    with open_image_file(path) as img:  # the data path's byte and pixel budgets
        if img.mode not in MASK_MODES:
            raise ValueError(
                f"mask {path} has mode {img.mode}; expected a single-channel class-id PNG ({', '.join(MASK_MODES)}), "
                "not a colour visualisation"
            )
        mask = torch.from_numpy(np.array(img, dtype=np.int64))
    if reduce_zero_label:
        mask = mask - 1
        mask[mask == -1] = IGNORE_INDEX
        mask[mask == IGNORE_INDEX - 1] = IGNORE_INDEX  # an original 255 stays ignored
    return mask


def validate_masks(pairs: Sequence[tuple[Path, Path]], num_classes: int, reduce_zero_label: bool) -> None:
    """Mode, size and class range of every mask, before any training (fast: PNG decode only)."""
    if num_classes < 1 or num_classes > IGNORE_INDEX:
        raise ValueError(f"--num-classes {num_classes}: must be in [1, {IGNORE_INDEX}]")
    for image_path, mask_path in pairs:
        mask = read_mask(mask_path, reduce_zero_label)
        with open_image_file(image_path) as img:
            width, height = img.size
        if tuple(mask.shape) != (height, width):
            raise ValueError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is {width}x{height}"
            )
        values = mask[mask != IGNORE_INDEX]
        if values.numel() and int(values.max()) >= num_classes:
            hint = "" if reduce_zero_label else " (ADE20K ids start at 1 with 0 = other: use --reduce-zero-label)"
            raise ValueError(
                f"mask {mask_path} holds class {int(values.max())}"
                f"{' after the zero-label shift' if reduce_zero_label else ''}, outside --num-classes {num_classes}{hint}"
            )


class SegmentationDataset(Dataset):
    """Training items: image and mask resized to crop x crop, random horizontal flip.
    Evaluation items: the full-size normalised image and its full-size mask."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        reduce_zero_label: bool,
        train: bool,
    ):
        self.pairs, self.crop_size, self.train = list(pairs), crop_size, train
        self.reduce_zero_label = reduce_zero_label
        self.to_rgb = ToRGBTensor()
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        with open_image_file(image_path) as img:
            image = self.to_rgb(img)
        mask = read_mask(mask_path, self.reduce_zero_label)
        if self.train:
            size = [self.crop_size, self.crop_size]
            image = v2.functional.resize(image, size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            mask = v2.functional.resize(mask[None], size, interpolation=v2.InterpolationMode.NEAREST)[0]
            if torch.rand(()) < 0.5:
                image, mask = image.flip(-1), mask.flip(-1)
        return self.normalise(image), mask


# ----------------------------------------------------------------------------------------- model


def patch_feature_map(backbone: nn.Module, images: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Patch tokens of the last ``n_layers`` blocks as a ``(B, n_layers * D, h, w)`` map."""
    layers = backbone.get_intermediate_layers(images, n=n_layers, reshape=True, norm=True)
    return torch.cat(list(layers), dim=1).float()


class LinearSegmentationHead(nn.Module):
    """BatchNorm over the feature channels, then a 1x1 convolution to class logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(features))


def _logits(
    backbone: nn.Module, head: nn.Module, images: torch.Tensor, n_layers: int, size: Sequence[int]
) -> torch.Tensor:
    with torch.no_grad():
        features = patch_feature_map(backbone, images, n_layers)
    # A NaN feature map trains a NaN head, whose argmax is class 0 everywhere: a silent, wrong mIoU.
    check_finite_rows(features, "segmentation: patch features", unit="images")
    return F.interpolate(head(features), size=tuple(size), mode="bilinear", align_corners=False)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``[0, length)``; the last window is aligned to the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.no_grad()
def predict_logits(
    backbone: nn.Module,
    head: nn.Module,
    image: torch.Tensor,
    *,
    n_layers: int,
    mode: str,
    crop_size: int,
    stride: int,
    out_size: Sequence[int],
) -> torch.Tensor:
    """Class logits ``(B, K, *out_size)`` of normalised ``image`` batches by resize or sliding window."""
    if mode == "resize":
        resized = F.interpolate(image, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
        return F.interpolate(
            _logits(backbone, head, resized, n_layers, (crop_size, crop_size)),
            size=tuple(out_size),
            mode="bilinear",
            align_corners=False,
        )
    if mode != "slide":
        raise ValueError(f"--inference must be resize or slide, got {mode!r}")
    height, width = image.shape[-2:]
    scale = crop_size / min(height, width)
    size = (max(crop_size, round(height * scale)), max(crop_size, round(width * scale)))
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    total, count = None, torch.zeros(1, 1, *size, device=image.device)
    for top, left in itertools.product(
        window_starts(size[0], crop_size, stride), window_starts(size[1], crop_size, stride)
    ):
        window = resized[..., top : top + crop_size, left : left + crop_size]
        logits = _logits(backbone, head, window, n_layers, (crop_size, crop_size))
        if total is None:
            total = torch.zeros(image.shape[0], logits.shape[1], *size, device=image.device)
        total[..., top : top + crop_size, left : left + crop_size] += logits
        count[..., top : top + crop_size, left : left + crop_size] += 1
    return F.interpolate(total / count, size=tuple(out_size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------- loops


def _endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def train_segmentation_head(
    backbone: nn.Module,
    head: LinearSegmentationHead,
    dataset: Dataset,
    *,
    n_layers: int,
    iterations: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """AdamW (weight decay 1e-4) with a cosine lr to 0 on the head only; returns the loss per step.

    A non-finite loss (the head diverged) stops training with :class:`NonFiniteError`."""
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"segmentation: iterations ({iterations}) and batch size ({batch_size}) must be >= 1")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"segmentation: --lr must be a positive finite number, got {lr}")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) > batch_size,
        num_workers=num_workers,
        generator=generator,
    )
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / iterations)))
    head.train()
    losses = []
    batches = _endless(loader)
    for step in progress_bar(range(iterations), total=iterations, desc="segmentation head", enabled=progress):
        images, masks = next(batches)
        images, masks = images.to(device), masks.to(device)
        if not bool((masks != IGNORE_INDEX).any()):
            # Every pixel ignored: the mean cross-entropy is 0/0 = NaN and its NaN gradient would
            # destroy the head. Such a batch teaches nothing; the schedule still advances.
            scheduler.step()
            continue
        logits = _logits(backbone, head, images, n_layers, masks.shape[-2:])
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteError(f"segmentation: the head's loss is {float(loss)} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    head.eval()
    if not losses:
        raise ValueError(f"segmentation: no training batch of the {iterations} steps had a labelled pixel")
    return losses


@torch.no_grad()
def evaluate_segmentation(
    backbone: nn.Module,
    head: LinearSegmentationHead,
    dataset: Dataset,
    *,
    num_classes: int,
    n_layers: int,
    mode: str,
    crop_size: int,
    stride: int,
    device: torch.device,
    progress: Iterator | None = None,
) -> dict:
    """mIoU, pixel accuracy and per-class IoU (percent) over ``dataset`` (one image at a time)."""
    head.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in progress if progress is not None else range(len(dataset)):
        image, mask = dataset[i]
        logits = predict_logits(
            backbone,
            head,
            image[None].to(device),
            n_layers=n_layers,
            mode=mode,
            crop_size=crop_size,
            stride=stride,
            out_size=mask.shape[-2:],
        )
        confusion += confusion_matrix(logits.argmax(dim=1)[0].cpu(), mask, num_classes, IGNORE_INDEX)
    return segmentation_scores(confusion)
