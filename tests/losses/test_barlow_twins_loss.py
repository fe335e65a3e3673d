"""Barlow Twins against hand computations and the official recipe written as loops."""

from __future__ import annotations

import pytest
import torch

from dinolite.losses import (
    BarlowTwinsLoss,
    cross_correlation,
)
from tests.losses.test_info_nce_loss import _views


def reference_barlow_twins(z_a, z_b, lam, eps=1e-5):
    """The official recipe: affine-free BatchNorm (biased variance), C = bn(z_a)^T bn(z_b) / N."""
    n, d = z_a.shape
    bn_a = (z_a - z_a.mean(0)) / torch.sqrt(z_a.var(0, unbiased=False) + eps)
    bn_b = (z_b - z_b.mean(0)) / torch.sqrt(z_b.var(0, unbiased=False) + eps)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(bn_a[b, i] * bn_b[b, j]) for b in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c**2
    return total


def test_barlow_twins_hand_computed():
    # z_b = z_a with decorrelated, centred dims: C = I, loss 0; z_b = -z_a: C_ii = -1, loss 4 per dim
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    loss = BarlowTwinsLoss(lambda_offdiag=0.5)
    assert loss(z, z).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(z, -z).item() == pytest.approx(8.0, abs=1e-6)
    # a shifted, rescaled copy is the same for C (batch normalisation): still 0
    assert loss(z, 3 * z + 7).item() == pytest.approx(0.0, abs=1e-6)
    # z_b dims swapped: C = [[0,1],[1,0]] -> on-diagonal 2, off-diagonal 0.5 * 2
    assert loss(z, z.flip(1)).item() == pytest.approx(3.0, abs=1e-6)


def test_barlow_twins_matches_reference():
    z_a, z_b = _views(n=7, d=4)
    got = BarlowTwinsLoss(lambda_offdiag=5e-3)(z_a, z_b).item()
    # the official formula has BatchNorm's eps: equal to within var/(var + eps)
    assert got == pytest.approx(reference_barlow_twins(z_a, z_b, 5e-3), rel=1e-4)
    c = cross_correlation(z_a, z_b)
    assert c.abs().max() <= 1 + 1e-6  # a matrix of correlations


def test_batchnorm_normalization_is_the_official_recipe():
    """normalization="batchnorm" is the released code's C (BatchNorm eps 1e-5), not only close to it."""
    z_a, z_b = _views(n=7, d=4)
    got = BarlowTwinsLoss(lambda_offdiag=5e-3, normalization="batchnorm")(z_a, z_b).item()
    assert got == pytest.approx(reference_barlow_twins(z_a, z_b, 5e-3), rel=1e-12)
    # a dimension whose variance is comparable to eps: BatchNorm shrinks its C_ii, the exact correlation not
    small = torch.cat([z_a[:, :1] * 1e-3, z_a[:, 1:]], dim=1)
    exact = cross_correlation(small, small)
    batchnorm = cross_correlation(small, small, normalization="batchnorm")
    variance = small[:, 0].var(unbiased=False)
    assert exact[0, 0].item() == pytest.approx(1.0, abs=1e-9)
    assert batchnorm[0, 0].item() == pytest.approx((variance / (variance + 1e-5)).item(), rel=1e-9)
    with pytest.raises(ValueError, match="normalization must be one of .*'layernorm'"):
        BarlowTwinsLoss(normalization="layernorm")


def test_barlow_twins_constant_dimension_and_bad_input():
    z = torch.randn(5, 3)
    z[:, 1] = 2.0  # no variance: C_11 = 0 (finite), contributing (1 - 0)^2
    c = cross_correlation(z, z)
    assert torch.isfinite(c).all() and c[1, 1] == 0
    with pytest.raises(ValueError, match="at least 2 rows"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="lambda_offdiag"):
        BarlowTwinsLoss(lambda_offdiag=-1)
