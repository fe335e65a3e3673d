"""The augmentation's pixel kernels against torchvision's (and PIL's solarize), which they replace for speed."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dinolite.data.pixel_ops import adjust_hue, gaussian_blur, gaussian_kernel1d, solarize


def test_fast_colour_ops_match_torchvision():
    img = torch.rand(3, 33, 47, generator=torch.Generator().manual_seed(0))
    for hue in (-0.1, 0.03, 0.5):
        assert torch.allclose(adjust_hue(img, hue), TF.adjust_hue(img, hue), atol=1e-5)
    for sigma in (0.1, 1.0, 2.0):
        assert torch.allclose(gaussian_blur(img, sigma, 9), TF.gaussian_blur(img, [9, 9], [sigma, sigma]), atol=1e-5)
    u8 = (img * 255).round().to(torch.uint8)
    assert torch.equal((solarize(u8.float() / 255, 128) * 255).round().to(torch.uint8), TF.solarize(u8, 128))


def test_the_blur_kernel_is_a_normalised_symmetric_gaussian():
    kernel = gaussian_kernel1d(1.0, 5)
    assert abs(sum(kernel) - 1.0) < 1e-12 and kernel == kernel[::-1] and max(kernel) == kernel[2]
    assert kernel[1] / kernel[2] == pytest.approx(math.exp(-0.5))


def test_out_of_range_arguments_are_refused():
    img = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=r"hue_factor must be in \[-0.5, 0.5\], got 0.6"):
        adjust_hue(img, 0.6)
    with pytest.raises(ValueError, match="kernel_size must be odd and positive, got 4"):
        gaussian_blur(img, 1.0, 4)
