"""EMA centering and Sinkhorn-Knopp (dinolite.losses.centering), single process."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import DINOLoss, iBOTPatchLoss, sinkhorn_knopp


def test_softmax_center_teacher_subtracts_center_and_sharpens():
    loss = DINOLoss(out_dim=3)
    loss.center.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    # (logits - center) = [0, 0, 0] -> uniform
    probs = loss.softmax_center_teacher(torch.tensor([[1.0, 0.0, 0.0]]), teacher_temp=0.04)
    torch.testing.assert_close(probs, torch.full((1, 3), 1 / 3))
    # (logits - center) / T = [0, ln 2, 0] with T = 0.5 -> [1/4, 1/2, 1/4]
    probs = loss.softmax_center_teacher(torch.tensor([[1.0, 0.5 * math.log(2), 0.0]]), teacher_temp=0.5)
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.5, 0.25]]))


def test_update_center_is_an_ema_of_the_batch_mean():
    loss = iBOTPatchLoss(out_dim=3, center_momentum=0.9)
    # batch mean of [[1,2,3],[3,2,1]] = [2,2,2]; center = 0.9 * 0 + 0.1 * 2 = 0.2
    loss.update_center(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    torch.testing.assert_close(loss.center, torch.full((1, 3), 0.2))
    # batch mean [0, 0, 3]; center = 0.9 * 0.2 + 0.1 * [0, 0, 3] = [0.18, 0.18, 0.48]
    loss.update_center(torch.tensor([[0.0, 0.0, 3.0]]))
    torch.testing.assert_close(loss.center, torch.tensor([[0.18, 0.18, 0.48]]))
    # no rows anywhere: nothing to average, the center is left alone
    loss.update_center(torch.zeros(0, 3))
    torch.testing.assert_close(loss.center, torch.tensor([[0.18, 0.18, 0.48]]))
    assert "center" in loss.state_dict()


def test_sinkhorn_one_iteration_by_hand():
    # exp(logits / T) with T = 1: [[1, 2], [3, 4]] (rows = samples). Q = K x B = [[1, 3], [2, 4]] / 10
    # prototype rows sum to [0.4, 0.6] -> divide, / K: [[1/8, 3/8], [1/6, 1/3]]
    # sample columns sum to [7/24, 17/24] -> sample 0: [3/7, 4/7], sample 1: [9/17, 8/17]
    logits = torch.log(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    q = sinkhorn_knopp(logits, temperature=1.0, n_iterations=1)
    torch.testing.assert_close(q, torch.tensor([[3 / 7, 4 / 7], [9 / 17, 8 / 17]]))


def test_sinkhorn_rows_and_columns():
    torch.manual_seed(0)
    logits = torch.randn(12, 4)
    q = DINOLoss(out_dim=4).sinkhorn_knopp_teacher(logits, teacher_temp=0.1, n_iterations=3)
    # each sample's target is a probability vector after any number of iterations
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    assert (q >= 0).all()
    # with enough iterations every prototype carries B / K of the mass (equipartition)
    q_converged = sinkhorn_knopp(logits, temperature=0.1, n_iterations=500)
    torch.testing.assert_close(q_converged.sum(dim=0), torch.full((4,), 3.0), atol=1e-3, rtol=0)


def test_sinkhorn_spreads_a_dominant_prototype():
    # near-collapse: prototype 0 wins for most samples, softmax gives it 7.1 of the 12 samples' mass;
    # 3 Sinkhorn iterations bring every prototype within 0.1 of the equipartition value 12 / 4 = 3
    torch.manual_seed(0)
    logits = torch.randn(12, 4) * 0.1
    logits[:, 0] += 0.3
    assert torch.softmax(logits / 0.1, dim=-1).sum(dim=0)[0] > 6.0
    q = sinkhorn_knopp(logits, temperature=0.1, n_iterations=3)
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0), atol=0.1, rtol=0)


def test_sinkhorn_is_stable_for_large_logits():
    # exp(100 / 0.04) overflows fp32; the max subtraction keeps it finite and equal to the shifted input
    logits = torch.tensor([[100.0, 99.75], [99.75, 100.0]])  # exact in binary
    q = sinkhorn_knopp(logits, temperature=0.04)
    torch.testing.assert_close(q, sinkhorn_knopp(logits - 100.0, temperature=0.04))
    assert torch.isfinite(q).all()


def test_sinkhorn_rejects_bad_input():
    with pytest.raises(ValueError, match="n_iterations"):
        sinkhorn_knopp(torch.zeros(2, 3), 0.1, n_iterations=0)
    with pytest.raises(ValueError, match=r"expected teacher logits of shape \(N, 3\)"):
        DINOLoss(out_dim=3).sinkhorn_knopp_teacher(torch.zeros(2, 4), 0.1)
