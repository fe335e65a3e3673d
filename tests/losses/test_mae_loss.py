"""MAE loss against hand-computed values (He et al. 2022, Sec. 3)."""

from __future__ import annotations

import pytest
import torch

from dinolite.losses import MAELoss
from dinolite.losses.mae_loss import normalise_patches, patchify


def test_patchify_is_raster_order_with_channels_fastest():
    image = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)  # channel 1 = channel 0 + 16
    patches = patchify(image, 2)
    assert patches.shape == (1, 4, 8)
    # patch 0 holds pixels (0,0), (0,1), (1,0), (1,1), each as (channel 0, channel 1)
    assert patches[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    # patch 1 is the top-right square (raster order: row by row)
    assert patches[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]
    with pytest.raises(ValueError, match="patches of 3 px"):
        patchify(image, 3)


def test_mae_loss_hand_values_on_raw_pixels():
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    zero = torch.zeros(1, 4, 4)
    # patch 0 = pixels [0, 1, 4, 5]: mean squared error (0 + 1 + 16 + 25) / 4
    assert float(MAELoss(2, norm_pix_loss=False)(zero, image, torch.tensor([[1, 0, 0, 0]]))) == 10.5
    # patch 3 = [10, 11, 14, 15]: (100 + 121 + 196 + 225) / 4 = 160.5; the mean over the masked patches
    two = torch.tensor([[True, False, False, True]])
    assert float(MAELoss(2, norm_pix_loss=False)(zero, image, two)) == pytest.approx((10.5 + 160.5) / 2)
    # a perfect prediction of the masked patches and a wrong one of the visible patches: 0
    prediction = torch.full((1, 4, 4), 99.0)
    prediction[0, 0] = patchify(image, 2)[0, 0]
    prediction[0, 3] = patchify(image, 2)[0, 3]
    assert float(MAELoss(2, norm_pix_loss=False)(prediction, image, two)) == 0.0


def test_mae_loss_normalised_pixels_use_the_unbiased_variance_of_each_patch():
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # [0, 1, 4, 5]: mean 2.5, squared deviations 6.25 + 2.25 + 2.25 + 6.25 = 17, unbiased var 17 / 3
    expected = 17 / (17 / 3 + 1e-6) / 4
    loss = MAELoss(2, norm_pix_loss=True)(torch.zeros(1, 4, 4), image, torch.tensor([[1, 0, 0, 1]]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    normed = normalise_patches(torch.randn(3, 5, 12))
    torch.testing.assert_close(normed.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(-1), torch.ones(3, 5), atol=1e-4, rtol=0)


def test_mae_loss_rejects_mismatched_shapes():
    image = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="expected \\(2, 4, 12\\)"):
        MAELoss(2)(torch.zeros(2, 4, 8), image, torch.ones(2, 4))
    with pytest.raises(ValueError, match="mask"):
        MAELoss(2)(torch.zeros(2, 4, 12), image, torch.ones(2, 3))
    with pytest.raises(ValueError, match="patch_size"):
        MAELoss(0)
