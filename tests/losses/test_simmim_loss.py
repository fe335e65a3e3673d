"""SimMIM loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import SimMIMLoss
from dinolite.losses.simmim_loss import per_patch_normalise


def test_simmim_loss_hand_values():
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    mask = torch.tensor([[True, False, False, False]])  # top-left 2x2 patch: pixels 0, 1, 4, 5
    zero = torch.zeros_like(image)
    assert float(SimMIMLoss(patch_size=2)(zero, image, mask)) == pytest.approx((0 + 1 + 4 + 5) / 4)
    # perfect on the masked patch, wrong everywhere else: visible pixels do not count
    recon = torch.full_like(image, 100.0)
    recon[..., :2, :2] = image[..., :2, :2]
    assert float(SimMIMLoss(patch_size=2)(recon, image, mask)) == 0.0
    # per-patch normalised target: [0, 1, 4, 5] -> mean 2.5, var 4.25
    expected = (2.5 + 1.5 + 1.5 + 2.5) / 4 / math.sqrt(4.25 + 1e-6)
    assert float(SimMIMLoss(patch_size=2, norm_target=True)(zero, image, mask)) == pytest.approx(expected, rel=1e-6)


def test_simmim_loss_averages_over_channels_and_masked_pixels():
    image = torch.ones(2, 3, 4, 4)
    image[1] *= 3.0
    mask = torch.tensor([[True, True, False, False], [False, False, False, True]])
    # image 0 contributes 8 pixels x 3 channels of error 1, image 1 4 pixels x 3 channels of error 3
    expected = (8 * 3 * 1 + 4 * 3 * 3) / (12 * 3)
    assert float(SimMIMLoss(2)(torch.zeros_like(image), image, mask)) == pytest.approx(expected)
    normed = per_patch_normalise(torch.randn(2, 3, 4, 4), 2).reshape(2, 3, 2, 2, 2, 2)
    torch.testing.assert_close(normed.mean(dim=(3, 5)), torch.zeros(2, 3, 2, 2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mask"):
        SimMIMLoss(2)(image, image, mask[:, :3])
