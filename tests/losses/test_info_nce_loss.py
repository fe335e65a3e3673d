"""InfoNCE (SimCLR NT-Xent) against hand computations and the paper's Eq. 1 written as loops."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import InfoNCELoss
from dinolite.losses.info_nce_loss import cross_view_info_nce_loss


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


def reference_cross_view(z_a, z_b, tau):
    """DirectCLR's released loss written as loops: anchors of one view against the other view of every image
    (N - 1 negatives), the two directions averaged."""
    u_a, u_b = [v / v.norm() for v in z_a], [v / v.norm() for v in z_b]
    n = len(u_a)
    total = 0.0
    for anchors, keys in ((u_a, u_b), (u_b, u_a)):
        for i in range(n):
            denominator = sum(math.exp(float(anchors[i] @ keys[k]) / tau) for k in range(n))
            total += -math.log(math.exp(float(anchors[i] @ keys[i]) / tau) / denominator) / n
    return total / 2


def test_cross_view_hand_computed():
    # two orthogonal images, both views identical: an anchor sees its positive at cos 1 and ONE negative
    # (the other image's other view) at cos 0, so l = -log(e / (e + 1)) = log(1 + 1/e) with tau = 1; NT-Xent
    # would also count the other image's own view: log(1 + 2/e)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cross_view_info_nce_loss(z, z, 1.0).item() == pytest.approx(math.log(1 + 1 / math.e), abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_cross_view_matches_reference(tau):
    z_a, z_b = _views()
    loss = cross_view_info_nce_loss(z_a, z_b, tau)
    assert loss.item() == pytest.approx(reference_cross_view(z_a, z_b, tau), rel=1e-6)
    assert loss.item() != pytest.approx(reference_nt_xent(z_a, z_b, tau), rel=1e-3)
    with pytest.raises(ValueError, match="cross_view_info_nce_loss: needs at least 2 images"):
        cross_view_info_nce_loss(z_a[:1], z_b[:1])


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
