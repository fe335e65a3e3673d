"""Negative cosine (BYOL/SimSiam) against hand computations, with and without the stop-gradient."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import NegativeCosineLoss


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
