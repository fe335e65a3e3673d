"""Views of the joint-embedding methods (SimCLR, Barlow Twins, SimSiam, BYOL, DirectCLR) and their collate.

Every view is a :class:`~dinolite.data.augment.CropRecipe` run by the same fast uint8 pipeline as
DINOv2's multi-crop (:func:`dinolite.data.augment.augment_crop`), so each view can have its own strength
(asymmetric views are one of the asymmetries Wang et al. 2022, "On the Importance of Asymmetry for
Siamese Representation Learning", study). The published two-view recipes (ImageNet, 224 px):

* SimCLR (Chen et al. 2020, App. A): RandomResizedCrop scale (0.08, 1), flip 0.5, colour jitter with
  strength s = 1, i.e. (0.8, 0.8, 0.8, 0.2), with p = 0.8, grayscale p = 0.2, Gaussian blur p = 0.5
  with a kernel of 10% of the image side and sigma ~ U(0.1, 2.0); no solarisation. Both views alike.
* BYOL (Grill et al. 2020, Table 6), also Barlow Twins' (Zbontar et al. 2021) and MoCo v3's (Chen et al.
  2021) for ViTs: scale (0.08, 1), flip 0.5, jitter (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale 0.2,
  blur p = 1.0 on view 1 and 0.1 on view 2, solarisation p = 0 on view 1 and 0.2 on view 2.
* SimSiam (Chen & He 2021, following MoCo v2): scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p = 0.8,
  grayscale 0.2, blur p = 0.5, flip 0.5, no solarisation; both views alike.

Optional multi-crop (Caron et al. 2020, SwAV): ``local_views_number`` extra small views. Every call
draws from the one ``generator`` the loader seeds per sample, so a resumed run sees the same views.
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


def blur_kernel_for(size: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd (23 at 224 px, 3 at 32 px)."""
    kernel = max(3, round(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def simclr_views(size: int = 224) -> tuple[CropRecipe, CropRecipe]:
    """SimCLR's two identical views (see the module docstring)."""
    view = CropRecipe(
        size,
        (0.08, 1.0),
        blur_p=0.5,
        solarize_p=0.0,
        color_jitter=(0.8, 0.8, 0.8, 0.2),
        blur_kernel_size=blur_kernel_for(size),
    )
    return view, view


def byol_views(size: int = 224) -> tuple[CropRecipe, CropRecipe]:
    """BYOL's asymmetric views (also Barlow Twins' and MoCo v3's)."""
    kernel = blur_kernel_for(size)
    return (
        CropRecipe(size, (0.08, 1.0), blur_p=1.0, solarize_p=0.0, blur_kernel_size=kernel),
        CropRecipe(size, (0.08, 1.0), blur_p=0.1, solarize_p=0.2, blur_kernel_size=kernel),
    )


def simsiam_views(size: int = 224) -> tuple[CropRecipe, CropRecipe]:
    """SimSiam's (MoCo v2's) two identical views."""
    view = CropRecipe(
        size,
        (0.2, 1.0),
        blur_p=0.5,
        solarize_p=0.0,
        color_jitter=(0.4, 0.4, 0.4, 0.1),
        blur_kernel_size=blur_kernel_for(size),
    )
    return view, view


class MultiViewAugmentation:
    """Image -> ``{"global_crops": [one crop per view recipe], "local_crops": [N small crops]}`` (normalised).

    The output has the keys of DINOv2's multi-crop, so :func:`collate_views` (and the trainer) treat both
    alike. ``views`` are the large views (two for every method here), in order.
    """

    def __init__(
        self,
        views: Sequence[CropRecipe],
        local_view: CropRecipe | None = None,
        local_views_number: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(views) < 2:
            raise ValueError(f"a joint-embedding method needs at least 2 views, got {len(views)}")
        if len({v.size for v in views}) != 1:
            raise ValueError(
                f"the large views must share one size (they are batched together), got {[v.size for v in views]}"
            )
        if local_views_number < 0:
            raise ValueError(f"local_views_number must be >= 0, got {local_views_number}")
        if local_views_number and local_view is None:
            raise ValueError(f"local_views_number={local_views_number} needs a local_view recipe")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={list(mean)} std={list(std)}")
        self.views = list(views)
        self.local_view = local_view
        self.local_views_number = int(local_views_number)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        image = to_uint8_chw(img)
        return {
            "global_crops": [self._view(image, recipe, generator) for recipe in self.views],
            "local_crops": [self._view(image, self.local_view, generator) for _ in range(self.local_views_number)]
            if self.local_view is not None
            else [],
        }

    def _view(self, image: torch.Tensor, recipe: CropRecipe, generator: torch.Generator | None) -> torch.Tensor:
        return (augment_crop(image, recipe, generator) - self._mean) / self._std


def collate_views(samples: Sequence[Mapping[str, Sequence[torch.Tensor]]], generator: Any = None) -> dict[str, Any]:
    """Stack views view-major: ``collated_global_crops`` (V*B, 3, H, W) = every image's view 0, then view 1,
    ...; ``collated_local_crops`` (N*B, 3, h, w) likewise (empty (0, 3, 0, 0) without local views).

    ``generator`` is accepted for the loader's interface and unused: these methods draw no batch-level
    randomness (no masks).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n_views = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    for i, sample in enumerate(samples):
        if len(sample["global_crops"]) != n_views or len(sample["local_crops"]) != n_local:
            raise ValueError(f"sample {i} has a different number of views than sample 0")
    global_views = torch.stack([s["global_crops"][v] for v in range(n_views) for s in samples])
    if n_local:
        local_views = torch.stack([s["local_crops"][v] for v in range(n_local) for s in samples])
    else:
        local_views = torch.empty(0, 3, 0, 0, dtype=global_views.dtype)
    return {"collated_global_crops": global_views, "collated_local_crops": local_views}
