"""Image transforms for evaluation (the DINOv2 classification-eval recipe, sizes as options).

Eval: resize the shorter side to ``resize_size`` (bicubic), center-crop ``crop_size``, scale to [0, 1],
normalise with the training mean/std. DINOv2 uses 256 -> 224, i.e. ``resize = crop * 256 / 224``.
Linear-probe training in online mode: random-resized crop (scale 0.08-1) + horizontal flip, as DINOv2.
Inputs may be PIL images (any mode) or uint8 CHW tensors; grey images are replicated to 3 channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

RESIZE_RATIO = 256 / 224  # DINOv2's eval resize / crop


def default_resize_size(crop_size: int) -> int:
    return int(round(crop_size * RESIZE_RATIO))


class ToRGBTensor:
    """PIL image or (C,H,W) tensor -> uint8 3-channel tensor image (grey and RGBA handled)."""

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = image.convert("RGB")
        tensor = v2.functional.to_image(image)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        elif tensor.shape[0] == 4:
            tensor = tensor[:3]
        if tensor.shape[0] != 3:
            raise ValueError(f"expected an image with 1, 3 or 4 channels, got shape {tuple(tensor.shape)}")
        return tensor


def _check_sizes(crop_size: int, resize_size: int, patch_size: int | None) -> None:
    if crop_size <= 0 or resize_size < crop_size:
        raise ValueError(f"--crop-size {crop_size} / --resize-size {resize_size}: need 0 < crop <= resize")
    if patch_size and crop_size % patch_size:
        raise ValueError(f"--crop-size {crop_size} is not a multiple of the backbone's patch size {patch_size}")


def build_eval_transform(
    crop_size: int,
    resize_size: int | None = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    patch_size: int | None = None,
) -> v2.Compose:
    """Resize shorter side -> center crop -> float [0,1] -> normalise."""
    resize_size = resize_size or default_resize_size(crop_size)
    _check_sizes(crop_size, resize_size, patch_size)
    return v2.Compose(
        [
            ToRGBTensor(),
            v2.Resize(resize_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def build_linear_train_transform(
    crop_size: int,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    patch_size: int | None = None,
) -> v2.Compose:
    """Random-resized crop + horizontal flip (online linear probing only)."""
    _check_sizes(crop_size, crop_size, patch_size)
    return v2.Compose(
        [
            ToRGBTensor(),
            v2.RandomResizedCrop(crop_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
