"""SIGReg (dinolite/losses/sigreg_loss.py): the Epps-Pulley statistic against closed forms, the release's
symmetric 17-knot quadrature against the full-range trapezoid of the complex ECF, the slices and their
seeds. 2 processes = 1 process: tests/losses/test_distributed_joint_embedding.py."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses.sigreg_loss import SIGRegLoss, epps_pulley_knots, slice_directions

ONE = torch.ones(1, 1, dtype=torch.float64)  # one slice of a 1-D embedding: the slice is the value itself


def _closed_form_two_points(a: float) -> float:
    """N * int |ecf - phi|^2 phi dt over the real line for the sample {-a, +a} (N = 2), written out:
    ecf(t) = cos(a t), so the integrand is cos^2(a t) e^{-t^2/2} - 2 cos(a t) e^{-t^2} + e^{-3 t^2/2} and
    int cos^2(a t) e^{-t^2/2} = sqrt(2 pi) (1 + e^{-2 a^2}) / 2, int cos(a t) e^{-t^2} = sqrt(pi) e^{-a^2/4},
    int e^{-3 t^2/2} = sqrt(2 pi / 3)."""
    s2pi = math.sqrt(2 * math.pi)
    return 2 * (
        s2pi * (1 + math.exp(-2 * a * a)) / 2 - 2 * math.sqrt(math.pi) * math.exp(-a * a / 4) + s2pi / math.sqrt(3)
    )


def test_a_single_point_at_zero_against_the_closed_form():
    """N = 1, x = 0: ecf = 1, T = int (1 - e^{-t^2/2})^2 e^{-t^2/2} = sqrt(2 pi) - 2 sqrt(pi) + sqrt(2 pi / 3)."""
    expected = math.sqrt(2 * math.pi) - 2 * math.sqrt(math.pi) + math.sqrt(2 * math.pi / 3)
    statistic = SIGRegLoss(t_max=12.0, n_points=4001)(torch.zeros(1, 1, dtype=torch.float64), ONE)
    assert statistic.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 2.5])
def test_two_symmetric_points_against_the_closed_form(a):
    z = torch.tensor([[-a], [a]], dtype=torch.float64)
    statistic = SIGRegLoss(t_max=12.0, n_points=4001)(z, ONE)
    assert statistic.item() == pytest.approx(_closed_form_two_points(a), rel=1e-5)


def test_the_17_knot_rule_is_the_full_range_trapezoid_of_the_complex_ecf():
    """The release's quadrature (knots on [0, 3], doubled weights) equals torch.trapezoid on the 33 knots of
    [-3, 3] of |ecf(t) - phi(t)|^2 phi(t), written with complex exponentials, times N; for every slice."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 4, generator=g, dtype=torch.float64) * 1.3 + 0.2
    directions = slice_directions(4, 5, seed=3).double()
    ours = SIGRegLoss().statistics(z, directions)
    t = torch.linspace(-3, 3, 33, dtype=torch.float64)
    x = z @ directions  # (N, K)
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(0)  # (K, 33)
    phi = torch.exp(-(t**2) / 2)
    expected = torch.trapezoid((ecf - phi).abs().square() * phi, t, dim=-1) * z.shape[0]
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)  # the knots are float32, as the release's
    torch.testing.assert_close(SIGRegLoss()(z, directions), expected.mean(), rtol=1e-6, atol=1e-6)


def test_views_are_tested_separately_and_averaged_with_the_slices():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 8, 4, generator=g)
    directions = slice_directions(4, 6, seed=0)
    loss = SIGRegLoss()
    per_view = torch.stack([loss.statistics(view, directions) for view in z])  # (V, K)
    assert loss.statistics(z, directions).shape == (3, 6)
    torch.testing.assert_close(loss(z, directions), per_view.mean())


def test_a_gaussian_batch_scores_its_null_mean_and_a_collapsed_one_far_more():
    """Under N(0, 1), E N |ecf(t) - phi(t)|^2 = 1 - phi(t)^2 (the variance of exp(itx)), so the statistic
    averages the quadrature of (1 - phi^2) phi (about 1); a constant or shrunk batch scores ~N."""
    _, phi, weights = epps_pulley_knots(3.0, 17)
    null_mean = (weights * (1 - phi**2)).sum()
    g = torch.Generator().manual_seed(2)
    directions = slice_directions(16, 64, seed=0)
    gaussian = SIGRegLoss()(torch.randn(2048, 16, generator=g), directions)
    collapsed = SIGRegLoss()(torch.full((2048, 16), 0.3), directions)
    shrunk = SIGRegLoss()(0.1 * torch.randn(2048, 16, generator=g), directions)
    assert 0.5 * null_mean < gaussian < 2 * null_mean and collapsed > 100 and shrunk > 100


def test_the_knots_and_weights_of_the_release_quadrature():
    t, phi, weights = epps_pulley_knots(3.0, 17)
    assert t.dtype == torch.float32 and t[0] == 0 and t[-1] == 3 and len(t) == 17
    dt = 3 / 16
    trapezoid = torch.full((17,), 2 * dt)
    trapezoid[[0, -1]] = dt
    torch.testing.assert_close(weights, trapezoid * torch.exp(-(t**2) / 2))
    torch.testing.assert_close(phi, torch.exp(-(t**2) / 2))
    with pytest.raises(ValueError, match="t_max must be > 0"):
        epps_pulley_knots(0.0, 17)


def test_slices_are_unit_gaussian_directions_fixed_by_their_seed():
    a = slice_directions(32, 100, seed=7)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(100))
    assert torch.equal(a, slice_directions(32, 100, seed=7))  # every rank, a resumed run
    assert not torch.allclose(a, slice_directions(32, 100, seed=8))  # a new set every step
    draws = torch.randn(32, 100, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, draws / draws.norm(dim=0))  # the release's draw for step 7 on CPU
    with pytest.raises(ValueError, match="num_slices"):
        slice_directions(32, 0, seed=0)


def test_the_gradient_pushes_a_shrunk_batch_outwards():
    """SIGReg is what keeps LeJEPA from collapsing: on a batch narrower than N(0, 1) its gradient spreads
    the rows (a step along -grad raises the spread)."""
    g = torch.Generator().manual_seed(3)
    z = (0.2 * torch.randn(256, 8, generator=g)).requires_grad_(True)
    SIGRegLoss()(z, slice_directions(8, 32, seed=0)).backward()
    stepped = z.detach() - 0.01 * z.grad
    assert stepped.std() > z.detach().std()


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 3\) and \(4, 2\)"):
        SIGRegLoss()(torch.zeros(8, 3), torch.zeros(4, 2))


def test_bf16_embeddings_are_tested_in_fp32():
    """Under bf16 autocast the projections arrive in bf16; the characteristic function is computed in fp32
    (cos and sin of bf16 products are coarse): the value equals the fp32 one of the same rounded rows."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(32, 8, generator=g).bfloat16()
    directions = slice_directions(8, 16, seed=0)
    value = SIGRegLoss()(z, directions)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, SIGRegLoss()(z.float(), directions))
