"""KoLeo regulariser (dinolite.losses.koleo_loss) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import KoLeoLoss, koleo_loss


def test_koleo_matches_hand_computation():
    # unit vectors x0 = (1, 0), x1 = (0, 1), x2 = (0.6, 0.8)
    # |x0-x1| = sqrt(2), |x0-x2| = sqrt(0.16 + 0.64) = sqrt(0.8), |x1-x2| = sqrt(0.36 + 0.04) = sqrt(0.4)
    # nearest: x0 -> x2 (sqrt 0.8), x1 -> x2 (sqrt 0.4), x2 -> x1 (sqrt 0.4)
    # loss = -(ln sqrt(0.8) + 2 ln sqrt(0.4)) / 3
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    expected = -(0.5 * math.log(0.8) + math.log(0.4)) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, rel=1e-5)
    # features are L2-normalised first: the scale of each row does not matter
    assert KoLeoLoss()(x * torch.tensor([[5.0], [0.5], [2.0]])).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_rejects_a_batch_of_one():
    with pytest.raises(ValueError, match="at least 2 samples.*batch of 1"):
        koleo_loss(torch.randn(1, 8))


def test_koleo_two_samples_and_duplicates_stay_finite():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # antipodal: distance 2
    assert koleo_loss(x).item() == pytest.approx(-math.log(2.0), rel=1e-6)
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    loss = koleo_loss(dup)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()


def test_koleo_gradient_spreads_features():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]], requires_grad=True)
    before = koleo_loss(x)
    before.backward()
    with torch.no_grad():
        stepped = x - 0.01 * x.grad
    assert koleo_loss(stepped).item() < before.item()


def test_koleo_is_fp32_from_bf16():
    assert koleo_loss(torch.randn(4, 8, dtype=torch.bfloat16)).dtype == torch.float32
