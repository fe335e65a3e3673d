"""DirectCLR: InfoNCE on the first d0 dimensions of the embedding, nothing of the rest."""

from __future__ import annotations

import pytest
import torch

from dinolite.losses import DirectCLRLoss
from tests.losses.test_info_nce_loss import _views, reference_cross_view, reference_nt_xent


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


def test_directclr_cross_view_negatives_are_the_releases_loss_on_the_first_d0_dims():
    z_a, z_b = _views(d=8)
    loss = DirectCLRLoss(d0=3, temperature=0.2, negatives="cross_view")
    assert loss(z_a, z_b).item() == pytest.approx(reference_cross_view(z_a[:, :3], z_b[:, :3], 0.2), rel=1e-6)
    with pytest.raises(ValueError, match="negatives must be one of .*'all'"):
        DirectCLRLoss(d0=3, negatives="all")
