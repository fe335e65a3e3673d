"""The LeJEPA objective (dinolite/losses/lejepa_loss.py): the prediction term by hand, lambda's split, no
stop-gradient on the centre. SIGReg itself: tests/losses/test_sigreg_loss.py."""

from __future__ import annotations

import pytest
import torch

from dinolite.losses.lejepa_loss import LeJEPALoss, prediction_term
from dinolite.losses.sigreg_loss import SIGRegLoss, slice_directions

# 3 views (2 global, 1 local) of 2 images, 1-D embeddings
VIEWS = torch.tensor([[[1.0], [3.0]], [[3.0], [5.0]], [[0.0], [0.0]]])


def test_prediction_by_hand():
    """Centres (1+3)/2 = 2 and (3+5)/2 = 4; squared distances 1, 1 | 1, 1 | 4, 16: mean 24 / 6 = 4."""
    assert prediction_term(VIEWS, n_global=2).item() == pytest.approx(4.0)
    # with one global view the centre is view 0: 0, 0 | 4, 4 | 1, 9 -> 18 / 6
    assert prediction_term(VIEWS, n_global=1).item() == pytest.approx(3.0)


def test_lambda_splits_prediction_and_sigreg():
    directions = slice_directions(1, 1, seed=0)
    loss = LeJEPALoss(sigreg_weight=0.25)
    terms = loss.terms(VIEWS, 2, directions)
    assert terms["prediction"].item() == pytest.approx(0.75 * 4.0)
    torch.testing.assert_close(terms["sigreg"], 0.25 * SIGRegLoss()(VIEWS, directions))
    torch.testing.assert_close(loss(VIEWS, 2, directions), terms["prediction"] + terms["sigreg"])
    # lambda = 0: pure prediction; lambda = 1: pure SIGReg
    assert LeJEPALoss(0.0)(VIEWS, 2, directions).item() == pytest.approx(4.0)
    torch.testing.assert_close(LeJEPALoss(1.0)(VIEWS, 2, directions), SIGRegLoss()(VIEWS, directions))


def test_the_centre_is_not_detached():
    """No stop-gradient: the global views also move towards the local ones. d/dz_{0,0} of
    1/6 sum (mu - z)^2 with mu = (z0 + z1)/2: the own term and every view's through mu."""
    views = VIEWS.clone().requires_grad_(True)
    prediction_term(views, 2).backward()
    # by hand for image 0: mu = 2; residuals r_v = mu - z_v: 1, -1, 2; d/dz0 = (2/6) (r0 (1/2 - 1) + r1 / 2 + r2 / 2)
    assert views.grad[0, 0, 0].item() == pytest.approx((2 / 6) * (1 * -0.5 + -1 * 0.5 + 2 * 0.5))
    assert views.grad[2, 0, 0].item() == pytest.approx((2 / 6) * -2.0)  # the local view: -(2/6) r2


def test_refuses_lambda_outside_zero_one_and_bad_shapes():
    with pytest.raises(ValueError, match=r"sigreg_weight \(lambda\) must be in \[0, 1\], got 1.5"):
        LeJEPALoss(1.5)
    with pytest.raises(ValueError, match="n_global=4"):
        LeJEPALoss()(VIEWS, 4, slice_directions(1, 1, seed=0))
