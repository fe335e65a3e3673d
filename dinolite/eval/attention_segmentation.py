"""Unsupervised object masks from CLS attention, scored against the object (Caron et al. 2021, DINO).

DINO's "self-attention maps as segmentation" measurement ("Emerging Properties in Self-Supervised Vision
Transformers", Fig. 4 and the Jaccard table beneath it; Fig. 3 shows the per-head maps): for each head of
the last block, the CLS token's attention over the patches is thresholded to keep the patches that hold
the top ``mass`` (60 %) of that head's attention, and the kept patches are compared with the object's
mask by the Jaccard index (intersection over union). The paper reports it for the best head; supervised
and random-init ViTs score far below DINO's.

Here, at demo scale, the object mask is the non-background pixels of Fashion-MNIST and digits images
(black background, bright object):

- a pixel is object when its grey value (the mean of the three channels, in [0, 1] after resizing to the
  evaluation size) is above ``ink_threshold`` (default 0.1, i.e. 25.5 / 255: above the faint ringing that
  bicubic resizing leaves beside strokes on the black background);
- a patch is object when at least ``min_object_fraction`` (default 0.5: a majority, ties to object) of
  its pixels are object: the mask is taken to the patch grid, where the attention lives.

Kept patches (the thresholded attention): sort a head's renormalised CLS->patch attention in decreasing
order and keep the shortest prefix whose mass reaches ``mass``; a patch is kept when the mass of the
patches ranked above it is below ``mass`` (ties ranked in patch order). This is the set DINO's released visualisation keeps (it sorts
ascending and keeps the patches whose ascending cumulative mass exceeds ``1 - mass``).

Per head, the Jaccard index is averaged over images; the best head is the one with the highest mean (chosen
on the evaluated images themselves, as the paper's figure shows its best head), and the mean over heads is
reported beside it, with two references that need no network:

- ``every_patch``: the mask that keeps every patch (the object's share of the image);
- ``brightest_patches``: the same 60 % rule applied to each patch's mean grey value instead of attention.
  On black-background images the object *is* the bright pixels, so a map that merely follows intensity
  (which a random-init ViT's attention partly does: token norms grow with brightness) scores this much;
  attention that beats it knows more about the object than its pixels' brightness.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.eval.feature_maps import cls_attention_maps
from dinolite.eval.transforms import ToRGBTensor
from dinolite.export.load import build_from_spec

MASS_KEPT = 0.6  # DINO Fig. 4: "thresholding the self-attention maps to keep 60% of the mass"
INK_THRESHOLD = 0.1
MIN_OBJECT_FRACTION = 0.5


@dataclass(frozen=True)
class MaskProtocol:
    """How attention and object masks are made (see the module docstring for each rule)."""

    mass: float = MASS_KEPT
    ink_threshold: float = INK_THRESHOLD
    min_object_fraction: float = MIN_OBJECT_FRACTION

    def __post_init__(self) -> None:
        for name in ("mass", "ink_threshold", "min_object_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0 and not (name == "ink_threshold" and value == 0.0):
                raise ValueError(f"{name}={value}: expected a value in (0, 1]")


# --------------------------------------------------------------------------------------------------
# The protocol on tensors
# --------------------------------------------------------------------------------------------------


def keep_top_mass(attention: Tensor, mass: float = MASS_KEPT) -> Tensor:
    """Boolean mask, same shape as ``attention`` ``(..., h, w)``: the patches holding the top ``mass`` of
    each map's attention (the shortest set of largest weights whose sum reaches ``mass`` of the total)."""
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass={mass}: expected a fraction in (0, 1]")
    flat = attention.flatten(-2).double()
    flat = flat / flat.sum(dim=-1, keepdim=True)
    values, order = flat.sort(dim=-1, descending=True, stable=True)  # ties: the earlier patch first
    mass_above = values.cumsum(dim=-1) - values  # attention of the patches ranked before each one
    kept_sorted = mass_above < mass
    kept = torch.zeros_like(kept_sorted).scatter(-1, order, kept_sorted)
    return kept.reshape(attention.shape)


def object_patch_masks(
    pixels: Tensor, patch_size: int, ink_threshold: float = INK_THRESHOLD, min_fraction: float = MIN_OBJECT_FRACTION
) -> Tensor:
    """``(B, h, w)`` bool: patches whose object-pixel fraction is at least ``min_fraction``; ``pixels`` are
    ``(B, C, H, W)`` in [0, 1] (not normalised), a pixel is object when its channel mean exceeds
    ``ink_threshold``."""
    height, width = pixels.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    ink = (pixels.float().mean(dim=1, keepdim=True) > ink_threshold).float()
    fraction = nn.functional.avg_pool2d(ink, kernel_size=patch_size)[:, 0]
    return fraction >= min_fraction


def jaccard(predicted: Tensor, target: Tensor) -> Tensor:
    """|P ∩ T| / |P ∪ T| over the last two dimensions (broadcast); 1 where both masks are empty."""
    intersection = (predicted & target).flatten(-2).sum(dim=-1).double()
    union = (predicted | target).flatten(-2).sum(dim=-1).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


# --------------------------------------------------------------------------------------------------
# Over a data set
# --------------------------------------------------------------------------------------------------


@dataclass
class HeadJaccards:
    """Mean Jaccard index (%) of each head's kept patches against the object mask, over ``num_images``."""

    per_head: list[float]
    # Why a head scores what it does: the share of the patches it keeps, and how much of what it keeps is
    # object (a peaked head keeps few patches, all on the object: high precision, low Jaccard).
    per_head_kept_share: list[float]
    per_head_precision: list[float]
    every_patch: float  # the floor: the mask that keeps every patch
    brightest_patches: float  # the 60 % rule on patch brightness instead of attention
    num_images: int
    skipped_without_object: int = 0  # images whose object mask is empty at the patch grid

    @property
    def best_head(self) -> int:
        return max(range(len(self.per_head)), key=self.per_head.__getitem__)

    @property
    def best(self) -> float:
        return self.per_head[self.best_head]

    @property
    def mean(self) -> float:
        return sum(self.per_head) / len(self.per_head)

    def to_dict(self) -> dict:
        return {
            "best_head": self.best_head,
            "best_jaccard": self.best,
            "mean_jaccard": self.mean,
            "per_head_jaccard": list(self.per_head),
            "per_head_kept_share": list(self.per_head_kept_share),
            "per_head_precision": list(self.per_head_precision),
            "every_patch_jaccard": self.every_patch,
            "brightest_patches_jaccard": self.brightest_patches,
            "num_images": self.num_images,
            "skipped_without_object": self.skipped_without_object,
        }


@dataclass
class Examples:
    """Images of a measurement (every ``stride``-th, up to a limit), with what the figures draw."""

    pixels: list[Tensor] = field(default_factory=list)  # (C, H, W) in [0, 1]
    attention: list[Tensor] = field(default_factory=list)  # (heads, h, w)
    kept: list[Tensor] = field(default_factory=list)  # (heads, h, w) bool
    objects: list[Tensor] = field(default_factory=list)  # (h, w) bool
    jaccard: list[Tensor] = field(default_factory=list)  # (heads,)

    def add(self, limit: int, first_index: int, stride: int = 1, **batch: Tensor) -> None:
        """Keep the batch's images whose index (``first_index`` + position) is a multiple of ``stride``."""
        positions = [i for i in range(len(batch["pixels"])) if (first_index + i) % stride == 0]
        positions = positions[: max(limit - len(self.pixels), 0)]
        for name, values in batch.items():
            getattr(self, name).extend(values[positions].cpu())


def require_cls_token(model: nn.Module, name: str) -> None:
    """Refuse a backbone without a CLS token: there is no CLS attention to threshold."""
    if getattr(model, "cls_token", True) is None:
        raise ValueError(
            f"{name}: the backbone has no CLS token (cls_token=false, e.g. the I-JEPA layout), so it has no CLS "
            "attention to threshold; the attention-segmentation protocol needs a method that trains a CLS token"
        )


def random_init_like(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture (its ``.spec``) freshly initialised from ``seed``, frozen, in eval mode; the
    global random state is left as it was."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("the backbone has no .spec (architecture record), so its random init cannot be rebuilt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_from_spec(spec)
    fresh.spec = spec
    return fresh.eval().requires_grad_(False)


def image_batches(source: Sequence[str], size: int, batch_size: int, max_images: Optional[int]) -> Iterator[Tensor]:
    """``(B, 3, size, size)`` float images in [0, 1] (shorter side resized to ``size``, bicubic, centre
    crop) of the first ``max_images`` samples of an image folder or shards, in source order."""
    transform = v2.Compose(
        [
            ToRGBTensor(),
            v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    dataset = build_eval_dataset(list(source), transform)
    images = (image for image, _, _ in itertools.islice(dataset, max_images))
    for batch in iter(lambda: list(itertools.islice(images, batch_size)), []):
        yield torch.stack(batch).clamp(0.0, 1.0)  # bicubic overshoot outside [0, 1]


def _normalise(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    shape = (1, -1, 1, 1)
    return (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


@torch.no_grad()
def measure_attention_jaccard(
    model: nn.Module,
    batches: Iterable[Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    protocol: MaskProtocol = MaskProtocol(),
    device: torch.device | str = "cpu",
    examples: int = 0,
    example_stride: int = 1,
) -> tuple[HeadJaccards, Examples]:
    """Each head's mean Jaccard index (%) over the images of ``batches`` (``(B, 3, H, W)`` in [0, 1]), and
    ``examples`` images (every ``example_stride``-th: a class-sorted folder then shows several classes)
    with their maps and masks for the figures."""
    require_cls_token(model, type(model).__name__)
    patch = int(model.patch_size)
    totals: Optional[Tensor] = None  # per head: summed Jaccard, kept share and precision
    every_total, bright_total, counted, skipped, seen = 0.0, 0.0, 0, 0, 0
    shown = Examples()
    for pixels in batches:
        objects = object_patch_masks(pixels, patch, protocol.ink_threshold, protocol.min_object_fraction)
        attention = cls_attention_maps(model, _normalise(pixels, mean, std).to(device)).cpu()
        kept = keep_top_mass(attention, protocol.mass)
        scores = jaccard(kept, objects[:, None])  # (B, heads)
        has_object = objects.flatten(1).any(dim=1)
        skipped += int((~has_object).sum())
        kept_share = kept.flatten(2).double().mean(dim=-1)
        precision = (kept & objects[:, None]).flatten(2).sum(-1) / kept.flatten(2).sum(-1).clamp_min(1)
        batch_total = torch.stack([scores, kept_share, precision.double()])[:, has_object].sum(dim=1)
        totals = batch_total if totals is None else totals + batch_total
        every_total += float(jaccard(torch.ones_like(objects), objects)[has_object].sum())
        brightness = nn.functional.avg_pool2d(pixels.float().mean(dim=1, keepdim=True), kernel_size=patch)[:, 0]
        bright_total += float(jaccard(keep_top_mass(brightness, protocol.mass), objects)[has_object].sum())
        counted += int(has_object.sum())
        shown.add(
            examples,
            seen,
            example_stride,
            pixels=pixels,
            attention=attention,
            kept=kept,
            objects=objects,
            jaccard=scores,
        )
        seen += len(pixels)
    if totals is None or counted == 0:
        raise ValueError(
            f"no image with an object patch ({skipped} read): every image is background at ink threshold "
            f"{protocol.ink_threshold} (pixels in [0, 1]); check the data or lower --ink-threshold"
        )
    per_head, kept_share, precision = (100.0 * totals / counted).tolist()
    every, bright = 100.0 * every_total / counted, 100.0 * bright_total / counted
    scores = HeadJaccards(per_head, kept_share, precision, every, bright, counted, skipped)
    return scores, shown
