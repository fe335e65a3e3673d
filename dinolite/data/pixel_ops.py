"""The pixel kernels of the augmentation recipe (:mod:`dinolite.data.augment`) on float (C,H,W) images in [0, 1].

Hue and blur replace torchvision's versions, which dominate the cost of the recipe on CPU: its hue goes
through a full RGB->HSV->RGB round trip and its blur is a dense k x k convolution. Both agree with
torchvision to within 2e-6 (tests/data/test_pixel_ops.py checks it); ``solarize`` keeps PIL's uint8
threshold on float pixels.
"""

from __future__ import annotations

import torch


def solarize(img: torch.Tensor, threshold: int = 128) -> torch.Tensor:
    """Invert the pixels of a float [0,1] image that are >= ``threshold`` on the 0..255 scale (uint8
    semantics of PIL's ImageOps.solarize)."""
    return torch.where(img >= threshold / 255.0, 1.0 - img, img)


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def adjust_hue(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """Rotate the HSV hue of a float RGB image (3,H,W) in [0,1] by ``hue_factor`` turns.

    Value V = max and chroma C = max - min are unchanged by a hue rotation, so the output is
    ``V - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 H') mod 6``, n = 5, 3, 1 for R, G, B
    (the closed form of HSV -> RGB), where H' is the rotated hue in [0, 1).
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    red, green, blue = img.unbind(0)
    # Element-wise max/min rather than reductions over dim 0: those pay a thread-pool round trip per
    # call, which dominates on small crops.
    maxc = torch.maximum(torch.maximum(red, green), blue)
    chroma = maxc - torch.minimum(torch.minimum(red, green), blue)
    inv_chroma = 1.0 / chroma.clamp_min(1e-8)
    # Hue sector (times 6): (g-b)/C if R is max, 2+(b-r)/C if G, 4+(r-g)/C if B.
    hue6 = torch.where(
        maxc == red,
        (green - blue) * inv_chroma,
        torch.where(maxc == green, (blue - red) * inv_chroma + 2.0, (red - green) * inv_chroma + 4.0),
    )
    hue6.add_(6.0 * hue_factor + 6.0)
    k = (hue6.unsqueeze(0) + _HUE_OFFSETS).remainder_(6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(0) - chroma.unsqueeze(0) * weight


def gaussian_kernel1d(sigma: float, kernel_size: int) -> list[float]:
    """Normalised samples of exp(-x^2 / (2 sigma^2)) at x = -(k-1)/2 .. (k-1)/2."""
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).tolist()


def gaussian_blur(img: torch.Tensor, sigma: float, kernel_size: int = 9) -> torch.Tensor:
    """Separable Gaussian blur of a float (C,H,W) image with reflect padding (torchvision's borders).

    Done as 2k shifted multiply-adds, which is several times faster on CPU than a depthwise conv2d.
    """
    if kernel_size % 2 != 1 or kernel_size <= 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    kernel = gaussian_kernel1d(sigma, kernel_size)
    radius = kernel_size // 2
    height, width = img.shape[-2:]
    padded = torch.nn.functional.pad(img.unsqueeze(0), [radius] * 4, mode="reflect").squeeze(0)
    rows = padded[..., :, 0:width] * kernel[0]
    for i in range(1, kernel_size):
        rows.add_(padded[..., :, i : i + width], alpha=kernel[i])
    out = rows[..., 0:height, :] * kernel[0]
    for i in range(1, kernel_size):
        out.add_(rows[..., i : i + height, :], alpha=kernel[i])
    return out
