"""VICReg's loss (dinolite/losses/vicreg_loss.py): hand-computed values, the value and gradient that the
released code computes, a reference written out here from the formula, and its input checks."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses.vicreg_loss import VICRegLoss, covariance_term, variance_term


def test_hand_computed_values():
    # four points on the axes; the second view is the first scaled by 2
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    terms = VICRegLoss().terms(z_a, 2 * z_a)
    # invariance: mean of (z_a - 2 z_a)^2 over the 8 entries = 4 / 8
    assert terms["invariance"].item() == pytest.approx(25 * 0.5, abs=1e-12)
    # variance: Var = 2/3 per dimension for z_a (std < 1), 8/3 for 2 z_a (std > 1: no penalty); halved sum
    assert terms["variance"].item() == pytest.approx(25 * (1 - math.sqrt(2 / 3 + 1e-4)) / 2, abs=1e-12)
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-15)  # the axes are uncorrelated
    # two perfectly correlated dimensions: Cov = Var = 4/3; both views alike, no invariance or variance cost
    z = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert covariance_term(z).item() == pytest.approx(2 * (4 / 3) ** 2 / 2, abs=1e-12)
    assert variance_term(z).item() == 0.0
    assert VICRegLoss()(z, z).item() == pytest.approx(2 * 16 / 9, abs=1e-12)


def _fixed_inputs(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(n * d, dtype=torch.float64).reshape(n, d)
    z_a = torch.sin(1.3 * k) * (1 + k % 5) / 3
    return z_a, torch.cos(0.7 * k + 0.2) * (1 + k % 3) / 2 + 0.5 * z_a


@pytest.mark.parametrize(
    ("n", "d", "loss", "grad_abs_sum", "grad_row0"),
    [
        (16, 8, 23.359444491201657, 32.14475489020276, [-0.19282632552823664, -0.1563890315066379, 0.08619485202831]),
        (6, 12, 30.21103891422959, 41.83768395761572, [-0.4997496665122255, -0.011510093311768055, 0.3071804349875074]),
    ],
)
def test_the_value_and_gradient_of_the_released_code(n, d, loss, grad_abs_sum, grad_row0):
    """Figures from facebookresearch/vicreg main_vicreg.py's ``VICReg.forward`` (identity backbone and
    projector, one process, ``batch_size=n``, coefficients 25/25/1) on these float64 inputs."""
    z_a, z_b = _fixed_inputs(n, d)
    z_a.requires_grad_(True)
    out = VICRegLoss(25.0, 25.0, 1.0)(z_a, z_b)
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-12)
    assert z_a.grad.abs().sum().item() == pytest.approx(grad_abs_sum, abs=1e-12)
    torch.testing.assert_close(z_a.grad[0, :3], torch.tensor(grad_row0, dtype=torch.float64), atol=1e-13, rtol=0)


def _reference(z_a: torch.Tensor, z_b: torch.Tensor, lam: float, mu: float, nu: float) -> torch.Tensor:
    """The paper's terms written out element by element, scaled as the release does (see the module doc)."""
    n, d = z_a.shape
    invariance = sum(((z_a[i] - z_b[i]) ** 2).sum() for i in range(n)) / n / d  # s(Z, Z') / d

    def v(z: torch.Tensor) -> torch.Tensor:
        hinge = 0.0
        for j in range(d):
            mean = z[:, j].sum() / n
            var = ((z[:, j] - mean) ** 2).sum() / (n - 1)
            hinge = hinge + torch.clamp(1.0 - torch.sqrt(var + 1e-4), min=0.0)
        return hinge / d

    def c(z: torch.Tensor) -> torch.Tensor:
        centred = z - z.sum(dim=0) / n
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    total = total + ((centred[:, j] * centred[:, k]).sum() / (n - 1)) ** 2
        return total / d

    return lam * invariance + mu * (v(z_a) + v(z_b)) / 2 + nu * (c(z_a) + c(z_b))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.5, 3.0)])
def test_matches_a_reference_written_from_the_formula(weights):
    g = torch.Generator().manual_seed(0)
    # half the dimensions with std < 1 (the hinge is active), half above
    z_a = torch.randn(10, 6, generator=g, dtype=torch.float64) * torch.tensor([0.3, 2.0, 0.5, 1.5, 0.8, 3.0])
    z_b = z_a + 0.4 * torch.randn(10, 6, generator=g, dtype=torch.float64)
    a1, b1 = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    a2, b2 = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    ours, reference = VICRegLoss(*weights)(a1, b1), _reference(a2, b2, *weights)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(b1.grad, b2.grad, atol=1e-12, rtol=1e-12)


def test_terms_sum_to_the_loss_and_low_precision_is_computed_in_fp32():
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    loss = VICRegLoss()
    terms = loss.terms(z_a, z_b)
    assert loss(z_a, z_b).item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
    half = loss(z_a.bfloat16(), z_b.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss(z_a.bfloat16().float(), z_b.bfloat16().float()).item(), rel=1e-6)


def test_bad_inputs_and_settings_are_refused():
    with pytest.raises(ValueError, match=r"views must both be \(B, D\)"):
        VICRegLoss()(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        VICRegLoss()(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="variance_weight must be >= 0"):
        VICRegLoss(variance_weight=-1.0)
    with pytest.raises(ValueError, match="eps and target_std must be > 0"):
        VICRegLoss(eps=0.0)
