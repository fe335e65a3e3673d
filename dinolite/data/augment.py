"""DINOv2 multi-crop augmentation on uint8 tensors (torchvision.transforms.v2 functional ops).

Recipe (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023, following
Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", 2021):

* 2 global crops: RandomResizedCrop(global_crops_size, scale=global_crops_scale, bicubic) + flip;
  N local crops: RandomResizedCrop(local_crops_size, scale=local_crops_scale, bicubic) + flip.
* every crop: colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order) with
  probability 0.8, then grayscale with probability 0.2.
* Gaussian blur (kernel 9, sigma ~ U(0.1, 2.0)) with probability 1.0 on global crop 1, 0.1 on global
  crop 2 and 0.5 on local crops -- the probabilities the paper states. The official code passes them
  through ``RandomApply`` in a way that inverts them (global crop 1 is never blurred); we apply the stated
  values and ``tests/data/test_augment.py`` measures the empirical rates.
* solarize (threshold 128) with probability 0.2 on global crop 2 only.
* ImageNet normalisation, float32 output.

Speed: the image is decoded once to a uint8 tensor, each crop is cut and resized first (so colour ops
touch only 224^2 or 96^2 pixels), and all random parameters are drawn from one ``torch.Generator`` so a
call is reproducible (the loader seeds one per sample for exact resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from dinolite.data.pixel_ops import adjust_hue, gaussian_blur, solarize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: Optional[torch.Generator], low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _bernoulli(generator: Optional[torch.Generator], p: float) -> bool:
    # Always draw, even for p in {0, 1}: the number of draws per crop stays fixed, which keeps the
    # random stream aligned when a probability is changed in the config.
    return torch.rand((), generator=generator).item() < p


def random_resized_crop_params(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: Optional[torch.Generator] = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ``U(scale)`` of the area with log-uniform aspect ``ratio``.

    Inception-style sampling (Szegedy et al. 2015), as torchvision's RandomResizedCrop: up to
    ``attempts`` draws, then a centre crop with the aspect ratio clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class CropRecipe:
    """Everything that makes one kind of crop (a view): geometry and photometric probabilities.

    DINOv2 has three (global 1, global 2, local) that differ only in size, scale, blur and solarisation;
    the joint-embedding methods' views (:mod:`dinolite.data.views`) set every field per view.
    """

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float
    horizontal_flip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 9
    solarize_threshold: int = 128

    def __post_init__(self) -> None:
        if self.size < 1 or not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"crop size must be >= 1 and scale (lo, hi) in (0, 1], got {self.size}, {self.scale}")
        if len(self.color_jitter) != 4:
            raise ValueError(
                f"color_jitter must be [brightness, contrast, saturation, hue], got {list(self.color_jitter)}"
            )
        if not 0.0 <= self.color_jitter[3] <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {self.color_jitter[3]}")
        for name in ("blur_p", "solarize_p", "horizontal_flip_p", "color_jitter_p", "grayscale_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.blur_kernel_size % 2 != 1 or self.blur_kernel_size <= 0:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {self.blur_kernel_size}")


def augment_crop(image: torch.Tensor, recipe: CropRecipe, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One float crop in [0, 1] (not normalised) of a uint8 CHW image following ``recipe``.

    The random draws come in a fixed order and number whatever the probabilities (crop, flip, jitter,
    grayscale, blur, sigma, solarize), so a sample's stream stays aligned when a probability changes.
    """
    # Geometry on uint8 (torch's fast path), photometry on float32 in [0, 1]: one conversion per
    # crop instead of one per colour op.
    return photometric(to_unit_float(geometric_crop(image, recipe, recipe.size, generator)), recipe, generator)


def geometric_crop(
    image: torch.Tensor, recipe: CropRecipe, size: int, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """The random resized crop (bicubic, antialiased) of a uint8 CHW image at ``size`` and its random flip:
    the first two draws of :func:`augment_crop`."""
    _, height, width = image.shape
    top, left, h, w = random_resized_crop_params(height, width, recipe.scale, generator=generator)
    out = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    if _bernoulli(generator, recipe.horizontal_flip_p):
        out = TF.horizontal_flip(out)
    return out


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]."""
    return image.to(torch.float32).div_(255.0)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, antialiased resize to ``size`` x ``size`` (uint8 or float); the image itself when already there."""
    if image.shape[-2:] == (size, size):
        return image
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def photometric(out: torch.Tensor, recipe: CropRecipe, generator: Optional[torch.Generator]) -> torch.Tensor:
    """The colour part of :func:`augment_crop` on a float crop in [0, 1]: jitter, grayscale, blur, solarize
    (every draw taken whatever the probabilities)."""
    out = color_jitter(out, recipe.color_jitter, recipe.color_jitter_p, generator)
    if _bernoulli(generator, recipe.grayscale_p):
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    do_blur = _bernoulli(generator, recipe.blur_p)
    sigma = _uniform(generator, *recipe.blur_sigma)
    if do_blur:
        out = gaussian_blur(out, sigma, recipe.blur_kernel_size)
    if _bernoulli(generator, recipe.solarize_p):
        out = solarize(out, recipe.solarize_threshold)
    return out


def color_jitter(
    img: torch.Tensor, strengths: Sequence[float], p: float, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """ColorJitter as torchvision with probability ``p``: factors ~ U(max(0, 1-v), 1+v) (hue ~ U(-h, h)) for
    ``strengths = (brightness, contrast, saturation, hue)``, applied in a random order."""
    apply = _bernoulli(generator, p)
    order = torch.randperm(4, generator=generator).tolist()
    b, c, s, h = strengths
    factors = [
        _uniform(generator, max(0.0, 1 - b), 1 + b),
        _uniform(generator, max(0.0, 1 - c), 1 + c),
        _uniform(generator, max(0.0, 1 - s), 1 + s),
        _uniform(generator, -h, h),
    ]
    if not apply:
        return img
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, adjust_hue)
    for i in order:
        if strengths[i] > 0:
            img = ops[i](img, factors[i])
    return img


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A PIL image or uint8 tensor (CHW, 1 or 3 channels) as a uint8 RGB CHW tensor."""
    if isinstance(img, Image.Image):
        img = TF.pil_to_tensor(img.convert("RGB"))
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a PIL image or a uint8 CHW tensor, got {type(img).__name__}")
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"expected a uint8 tensor of shape (C, H, W) with C in 1/3/4, got {img.dtype} {tuple(img.shape)}"
        )
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    elif img.shape[0] == 4:
        img = img[:3]
    return img


class MultiCropAugmentation:
    """Image -> ``{"global_crops": [2 x (3,G,G) float], "local_crops": [N x (3,L,L) float]}``, plus
    ``"gram_teacher_crops": [2 x (3,T,T) float]`` with ``gram_teacher_crops_size=T`` (DINOv3).

    Probabilities default to the DINOv2 paper; ``from_config`` reads them from the ``crops`` section.

    The Gram teacher's crops are DINOv3's (``DataAugmentationDINO``): each global crop is cut once at
    ``max(G, T)`` and flipped; with ``gram_teacher_no_distortions`` the student's crop is resized to ``G``
    before its colour distortions and the Gram teacher's is the undistorted cut resized to ``T``;
    without, the distortions are applied at ``max(G, T)`` and both are resized from the normalised result.
    The random draws are the same in number and order as without Gram teacher crops.
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        local_crops_number: int = 8,
        global_crops_scale: Sequence[float] = (0.32, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.32),
        horizontal_flip_p: float = 0.5,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p_global1: float = 1.0,
        blur_p_global2: float = 0.1,
        blur_p_local: float = 0.5,
        solarize_p_global2: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        blur_kernel_size: int = 9,
        solarize_threshold: int = 128,
        gram_teacher_crops_size: Optional[int] = None,
        gram_teacher_no_distortions: bool = False,
    ) -> None:
        if gram_teacher_crops_size is not None and gram_teacher_crops_size < 1:
            raise ValueError(f"gram_teacher_crops_size must be >= 1 or None, got {gram_teacher_crops_size}")
        self.gram_teacher_crops_size = None if gram_teacher_crops_size is None else int(gram_teacher_crops_size)
        self.gram_teacher_no_distortions = bool(gram_teacher_no_distortions)
        if len(color_jitter) != 4:
            raise ValueError(f"color_jitter must be [brightness, contrast, saturation, hue], got {list(color_jitter)}")
        if not 0.0 <= color_jitter[3] <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {color_jitter[3]}")
        for name, p in [
            ("horizontal_flip_p", horizontal_flip_p),
            ("color_jitter_p", color_jitter_p),
            ("grayscale_p", grayscale_p),
            ("blur_p_global1", blur_p_global1),
            ("blur_p_global2", blur_p_global2),
            ("blur_p_local", blur_p_local),
            ("solarize_p_global2", solarize_p_global2),
        ]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.global_crops_size = int(global_crops_size)
        self.local_crops_size = int(local_crops_size)
        self.local_crops_number = int(local_crops_number)
        gscale = (float(global_crops_scale[0]), float(global_crops_scale[1]))
        lscale = (float(local_crops_scale[0]), float(local_crops_scale[1]))
        self.horizontal_flip_p = horizontal_flip_p
        self.color_jitter = tuple(float(v) for v in color_jitter)
        self.color_jitter_p = color_jitter_p
        self.grayscale_p = grayscale_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel_size = int(blur_kernel_size)
        self.solarize_threshold = int(solarize_threshold)
        shared = {
            "horizontal_flip_p": horizontal_flip_p,
            "color_jitter": self.color_jitter,
            "color_jitter_p": color_jitter_p,
            "grayscale_p": grayscale_p,
            "blur_sigma": self.blur_sigma,
            "blur_kernel_size": self.blur_kernel_size,
            "solarize_threshold": self.solarize_threshold,
        }
        self.global1 = CropRecipe(self.global_crops_size, gscale, blur_p_global1, 0.0, **shared)
        self.global2 = CropRecipe(self.global_crops_size, gscale, blur_p_global2, solarize_p_global2, **shared)
        self.local = CropRecipe(self.local_crops_size, lscale, blur_p_local, 0.0, **shared)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got mean={list(mean)} std={list(std)}")
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_config(cls, crops_cfg: Any) -> "MultiCropAugmentation":
        """Build from the ``crops`` config section (``dinolite.config.CropsConfig`` or any object/dict
        with the same keys)."""
        get = crops_cfg.get if isinstance(crops_cfg, dict) else lambda k: getattr(crops_cfg, k)
        keys = [
            "global_crops_size",
            "local_crops_size",
            "local_crops_number",
            "global_crops_scale",
            "local_crops_scale",
            "horizontal_flip_p",
            "color_jitter",
            "color_jitter_p",
            "grayscale_p",
            "blur_p_global1",
            "blur_p_global2",
            "blur_p_local",
            "solarize_p_global2",
            "mean",
            "std",
            "gram_teacher_crops_size",
            "gram_teacher_no_distortions",
        ]
        return cls(**{k: get(k) for k in keys})

    # ------------------------------------------------------------------------------------------------

    def __call__(self, img: Any, generator: Optional[torch.Generator] = None) -> dict[str, list[torch.Tensor]]:
        image = to_uint8_chw(img)
        if self.gram_teacher_crops_size is None:
            crops = {
                "global_crops": [self.crop(image, self.global1, generator), self.crop(image, self.global2, generator)]
            }
        else:
            pairs = [self.global_and_gram_crop(image, recipe, generator) for recipe in (self.global1, self.global2)]
            crops = {"global_crops": [pair[0] for pair in pairs], "gram_teacher_crops": [pair[1] for pair in pairs]}
        crops["local_crops"] = [self.crop(image, self.local, generator) for _ in range(self.local_crops_number)]
        return crops

    def crop(self, image: torch.Tensor, recipe: CropRecipe, generator: Optional[torch.Generator]) -> torch.Tensor:
        """One normalised float crop of a uint8 CHW image following ``recipe``."""
        return self.normalize(augment_crop(image, recipe, generator))

    def normalize(self, crop: torch.Tensor) -> torch.Tensor:
        return (crop - self._mean) / self._std

    def global_and_gram_crop(
        self, image: torch.Tensor, recipe: CropRecipe, generator: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One global crop and the Gram teacher's crop of the same region (class docstring), both normalised."""
        assert self.gram_teacher_crops_size is not None
        size, teacher_size = recipe.size, self.gram_teacher_crops_size
        cut = geometric_crop(image, recipe, max(size, teacher_size), generator)
        if self.gram_teacher_no_distortions:
            student = self.normalize(photometric(to_unit_float(resize_square(cut, size)), recipe, generator))
            return student, self.normalize(to_unit_float(resize_square(cut, teacher_size)))
        distorted = self.normalize(photometric(to_unit_float(cut), recipe, generator))
        return resize_square(distorted, size), resize_square(distorted, teacher_size)
