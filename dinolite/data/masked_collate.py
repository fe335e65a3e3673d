"""Views and collates of the masked-prediction methods (I-JEPA, SimMIM, MSN, MAE, BEiT).

* :class:`SingleViewAugmentation`: one crop per image (I-JEPA: RandomResizedCrop scale (0.3, 1.0), no
  other augmentation, Assran et al. 2023 Sec. 4; SimMIM: RandomResizedCrop scale (0.67, 1.0), ratio
  (3/4, 4/3), horizontal flip, Xie et al. 2022 Sec. 4.1). Returns ``{"image": (3, S, S)}`` normalised.
* :func:`collate_ijepa`: images + I-JEPA multi-block masks (:class:`MultiBlockMaskGenerator`).
* :func:`collate_simmim`: images + SimMIM random masks (:class:`SimMIMMaskGenerator`).
* :func:`collate_mae`: images + MAE's random masking (:func:`mae_noise`, :func:`mae_shuffle`).
* :func:`collate_beit`: images + BEiT's block-wise masks (:class:`dinolite.data.masking.MaskingGenerator`).
* :func:`collate_msn`: MSN's views from :class:`dinolite.data.views.MultiViewAugmentation` (global view 0
  = the target view, view 1 = the anchor, local views = focal anchors) + patch-drop indices for every
  anchor (Assran et al. 2022, Sec. 3; ``patch_drop`` in the released configs).

Every collate takes the loader's per-batch ``generator`` (seeded by ``(seed, rank, batch)``) and draws
all masks from it through per-sample generators, so resume replays them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dinolite.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropRecipe,
    augment_crop,
    to_uint8_chw,
)
from dinolite.data.masked_views import (
    MultiBlockMaskGenerator,
    SimMIMMaskGenerator,
    mae_noise,
    mae_shuffle,
    per_sample_generators,
    random_keep_indices,
)
from dinolite.data.masking import MaskingGenerator


class SingleViewAugmentation:
    """Image -> ``{"image": normalised (3, size, size) float}`` following one :class:`CropRecipe`."""

    def __init__(self, recipe: CropRecipe, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={list(mean)} std={list(std)}")
        self.recipe = recipe
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {"image": (augment_crop(to_uint8_chw(img), self.recipe, generator) - self._mean) / self._std}


def _stack_images(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return torch.stack([s["image"] for s in samples])


def collate_ijepa(
    samples: Sequence[Mapping[str, Any]],
    mask_generator: MultiBlockMaskGenerator,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """``{"images": (B,3,H,W), "context_idx": (B,Nc), "target_idx": (B,M,Nt)}``."""
    images = _stack_images(samples)
    context_idx, target_idx = mask_generator(images.shape[0], generator)
    return {"images": images, "context_idx": context_idx, "target_idx": target_idx}


def collate_simmim(
    samples: Sequence[Mapping[str, Any]], mask_generator: SimMIMMaskGenerator, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """``{"images": (B,3,H,W), "masks": (B, h*w) bool}`` (True = masked ViT patch)."""
    images = _stack_images(samples)
    if tuple(images.shape[-2:]) != (mask_generator.input_size,) * 2:
        raise ValueError(
            f"images of {tuple(images.shape[-2:])} px, but the SimMIM masks are drawn for {mask_generator.input_size} px"
        )
    return {"images": images, "masks": mask_generator.batch(images.shape[0], generator)}


def collate_mae(
    samples: Sequence[Mapping[str, Any]], patch_size: int, mask_ratio: float, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """``{"images": (B,3,H,W), "ids_keep": (B,K), "ids_restore": (B,N)}`` (:func:`mae_shuffle`)."""
    images = _stack_images(samples)
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"images of {height}x{width} px do not split into patches of {patch_size} px")
    noise = mae_noise(images.shape[0], (height // patch_size) * (width // patch_size), generator)
    ids_keep, ids_restore = mae_shuffle(noise, mask_ratio)
    return {"images": images, "ids_keep": ids_keep, "ids_restore": ids_restore}


def collate_beit(
    samples: Sequence[Mapping[str, Any]],
    mask_generator: MaskingGenerator,
    num_masking_patches: int,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """``{"images": (B,3,H,W), "masks": (B, h*w) bool}``: one block-wise mask (BEiT's rule) per image, from
    per-image generators drawn in order from ``generator`` (resume-exact)."""
    images = _stack_images(samples)
    grid = mask_generator.get_shape()
    if images.shape[-2] % grid[0] or images.shape[-1] % grid[1]:
        raise ValueError(f"images of {tuple(images.shape[-2:])} px do not split into the {grid} mask grid")
    masks = [mask_generator(num_masking_patches, g).flatten() for g in per_sample_generators(generator, len(samples))]
    return {"images": images, "masks": torch.stack(masks)}


def collate_msn(
    samples: Sequence[Mapping[str, Sequence[torch.Tensor]]],
    patch_size: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    focal_patch_drop: bool = True,
    patch_drop_per: str = "image",
    patch_drop_rounding: str = "round",
) -> dict[str, Any]:
    """MSN's batch: ``target_views (B,3,H,W)`` (every image's large view 0), ``anchor_views (A*B,3,H,W)``
    (large views 1..A, view-major), ``focal_views (N*B,3,h,w)`` (view-major), ``anchor_keep (A*B,K)`` and
    ``focal_keep (N*B,Kf)`` patch indices kept after dropping ``mask_ratio`` of the patches of every anchor
    (:func:`random_keep_indices` with ``patch_drop_per`` / ``patch_drop_rounding``: ``msn.patch_drop_per``,
    ``msn.patch_drop_rounding``; with ``batch`` the anchors share one subset and the focal views another).
    ``focal_patch_drop=False`` keeps every focal patch (the released MSN's, ``msn.focal_patch_drop``)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n_large = len(samples[0]["global_crops"])
    if n_large < 2:
        raise ValueError(f"MSN needs at least 2 large views per image (target, anchor), got {n_large}")
    n_focal = len(samples[0]["local_crops"])
    target = torch.stack([s["global_crops"][0] for s in samples])
    anchor = torch.stack([s["global_crops"][v] for v in range(1, n_large) for s in samples])
    side = target.shape[-1]
    drop = {"per": patch_drop_per, "rounding": patch_drop_rounding}
    anchor_keep = random_keep_indices(anchor.shape[0], (side // patch_size) ** 2, mask_ratio, generator, **drop)
    if n_focal:
        focal = torch.stack([s["local_crops"][v] for v in range(n_focal) for s in samples])
        n_patches = (focal.shape[-1] // patch_size) ** 2
        if focal_patch_drop:
            focal_keep = random_keep_indices(focal.shape[0], n_patches, mask_ratio, generator, **drop)
        else:
            focal_keep = torch.arange(n_patches).expand(focal.shape[0], -1).clone()
    else:
        focal = torch.empty(0, 3, 0, 0, dtype=target.dtype)
        focal_keep = torch.empty(0, 0, dtype=torch.long)
    return {
        "target_views": target,
        "anchor_views": anchor,
        "focal_views": focal,
        "anchor_keep": anchor_keep,
        "focal_keep": focal_keep,
    }
