"""I-JEPA loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import IJEPALoss
from dinolite.losses.ijepa_loss import gather_tokens


def test_gather_tokens_picks_rows_per_image():
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    idx = torch.tensor([[[0, 4], [1, 2]], [[3, 3], [0, 1]]])
    assert gather_tokens(tokens, idx).squeeze(-1).tolist() == [[[0, 4], [1, 2]], [[8, 8], [5, 6]]]


def test_ijepa_loss_hand_values():
    # every target token is [0, 2] -> layer norm (mean 1, var 1) gives [-1, 1] / sqrt(1 + 1e-5)
    tokens = torch.tensor([0.0, 2.0]).expand(1, 3, 2).clone()
    tokens[0, 1] = torch.tensor([5.0, 5.0])  # position 1 is not a target, its value must not matter
    idx = torch.tensor([[[0], [2]]])  # M=2 blocks of one patch
    prediction = torch.zeros(1, 2, 1, 2)
    scale = 1 / math.sqrt(1 + 1e-5)
    assert float(IJEPALoss("mse")(prediction, tokens, idx)) == pytest.approx(scale**2, rel=1e-6)
    assert float(IJEPALoss("l1")(prediction, tokens, idx)) == pytest.approx(scale, rel=1e-6)
    assert float(IJEPALoss("smooth_l1")(prediction, tokens, idx)) == pytest.approx(0.5 * scale**2, rel=1e-6)
    # predicting the normalised targets exactly costs nothing
    exact = torch.tensor([-scale, scale]).expand(1, 2, 1, 2)
    assert float(IJEPALoss()(exact, tokens, idx)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("distance", ["smooth_l1", "mse", "l1"])
def test_ijepa_per_image_error_averages_each_images_blocks_and_its_mean_is_the_loss(distance):
    # image 0 predicts its normalised targets exactly, image 1 predicts zeros: 0 and the hand value above
    tokens = torch.tensor([0.0, 2.0]).expand(2, 3, 2).clone()
    idx = torch.tensor([[[0], [2]], [[0], [2]]])
    scale = 1 / math.sqrt(1 + 1e-5)
    prediction = torch.stack([torch.tensor([-scale, scale]).expand(2, 1, 2), torch.zeros(2, 1, 2)])
    expected = {"smooth_l1": 0.5 * scale**2, "mse": scale**2, "l1": scale}[distance]
    loss = IJEPALoss(distance)
    per_image = loss.per_image(loss.errors(prediction, tokens, idx))
    assert per_image.shape == (2,) and float(per_image[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(per_image[1]) == pytest.approx(expected, rel=1e-6)
    assert float(per_image.mean()) == pytest.approx(float(loss(prediction, tokens, idx)), rel=1e-6)


def test_ijepa_loss_targets_carry_no_gradient_and_shapes_are_checked():
    tokens = torch.randn(2, 6, 4, requires_grad=True)
    idx = torch.randint(0, 6, (2, 3, 2))
    pred = torch.randn(2, 3, 2, 4, requires_grad=True)
    IJEPALoss()(pred, tokens, idx).backward()
    assert tokens.grad is None and pred.grad is not None
    with pytest.raises(ValueError, match="do not match the targets"):
        IJEPALoss()(torch.randn(2, 3, 3, 4), tokens, idx)
    with pytest.raises(ValueError, match="distance"):
        IJEPALoss("cosine")
