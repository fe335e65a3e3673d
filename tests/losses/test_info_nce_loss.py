"""InfoNCE, DirectCLR, Barlow Twins and negative cosine against hand computations and plain references."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import (
    BarlowTwinsLoss,
    DirectCLRLoss,
    InfoNCELoss,
    NegativeCosineLoss,
    cross_correlation,
)


def _views(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def reference_nt_xent(z_a, z_b, tau):
    """Eq. 1 of SimCLR written as loops over the 2N views."""
    views = [v / v.norm() for v in list(z_a) + list(z_b)]
    n = len(z_a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(views[i] @ views[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(views[i] @ views[positive]) / tau) / denominator)
    return total / (2 * n)


def test_info_nce_hand_computed():
    # two orthogonal images, both views identical: each anchor sees its positive at cos 1 and two
    # negatives at cos 0, so l_i = -log(e / (e + 2)) = log(1 + 2/e) with tau = 1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert InfoNCELoss(temperature=1.0)(z, z).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # scale does not matter (the embeddings are L2-normalised)
    assert InfoNCELoss(temperature=1.0)(3 * z, 0.5 * z).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_info_nce_matches_reference(tau):
    z_a, z_b = _views()
    loss = InfoNCELoss(temperature=tau)(z_a, z_b)
    assert loss.item() == pytest.approx(reference_nt_xent(z_a, z_b, tau), rel=1e-6)


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="at least 2 images"):
        InfoNCELoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="views must both be"):
        InfoNCELoss()(torch.randn(3, 4), torch.randn(2, 4))


def test_directclr_uses_only_the_first_d0_dims():
    z_a, z_b = _views(d=8)
    loss = DirectCLRLoss(d0=3, temperature=0.2)
    assert loss(z_a, z_b).item() == pytest.approx(reference_nt_xent(z_a[:, :3], z_b[:, :3], 0.2), rel=1e-6)
    noisy_a = z_a.clone()
    noisy_a[:, 3:] = torch.randn(6, 5, dtype=torch.float64)
    assert loss(noisy_a, z_b).item() == pytest.approx(loss(z_a, z_b).item(), rel=1e-12)
    grads = z_a.clone().requires_grad_(True)
    loss(grads, z_b).backward()
    assert torch.all(grads.grad[:, 3:] == 0) and grads.grad[:, :3].abs().sum() > 0
    with pytest.raises(ValueError, match="d0=9"):
        DirectCLRLoss(d0=9)(z_a, z_b)


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


def test_barlow_twins_constant_dimension_and_bad_input():
    z = torch.randn(5, 3)
    z[:, 1] = 2.0  # no variance: C_11 = 0 (finite), contributing (1 - 0)^2
    c = cross_correlation(z, z)
    assert torch.isfinite(c).all() and c[1, 1] == 0
    with pytest.raises(ValueError, match="at least 2 rows"):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="lambda_offdiag"):
        BarlowTwinsLoss(lambda_offdiag=-1)


def test_negative_cosine_hand_computed_and_stop_gradient():
    p_a = torch.tensor([[1.0, 0.0]])
    p_b = torch.tensor([[0.0, 2.0]])
    z_a = torch.tensor([[1.0, 1.0]])
    z_b = torch.tensor([[3.0, 0.0]])
    # 1/2 * -cos(p_a, z_b) + 1/2 * -cos(p_b, z_a) = 1/2 * (-1) + 1/2 * (-1/sqrt 2)
    expected = -0.5 - 0.5 / math.sqrt(2)
    for stop_gradient in (True, False):
        za, zb = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
        pa = p_a.clone().requires_grad_(True)
        loss = NegativeCosineLoss(stop_gradient=stop_gradient)(pa, p_b, za, zb)
        assert loss.item() == pytest.approx(expected, abs=1e-6)
        loss.backward()
        assert pa.grad is not None
        if stop_gradient:
            assert za.grad is None and zb.grad is None
        else:
            # d/dz_a of -1/2 cos(p_b, z_a) with p_b = (0, 1) direction: -1/2 * (p/|p| - cos * z/|z|) / |z|
            u = torch.tensor([0.0, 1.0])
            zn = z_a[0] / z_a[0].norm()
            expected_grad = -0.5 * (u - (u @ zn) * zn) / z_a[0].norm()
            torch.testing.assert_close(za.grad[0], expected_grad)


def test_negative_cosine_directed_is_one_term_with_the_target_detached():
    p = torch.tensor([[0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0]], requires_grad=True)
    # -cos((0, 2), (1, 1)) = -1/sqrt 2, and no gradient reaches the target with the stop-gradient
    loss = NegativeCosineLoss(stop_gradient=True).directed(p, z)
    assert loss.item() == pytest.approx(-1 / math.sqrt(2), abs=1e-6)
    loss.backward()
    assert p.grad is not None and z.grad is None
    z2 = z.detach().clone().requires_grad_(True)
    NegativeCosineLoss(stop_gradient=False).directed(p.detach(), z2).backward()
    assert z2.grad is not None and z2.grad.abs().sum() > 0
