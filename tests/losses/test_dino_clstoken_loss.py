"""DINO CLS loss (dinolite.losses.dino_clstoken_loss) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolite.losses import DINOLoss

T_S = 0.1  # student temperature; logits below are written as (value * T_S) so that s / T_S = value


def _one_hot(index: int, k: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor([index]), k).float()


def test_dino_loss_matches_hand_computation():
    # teacher global crops: t0 = [1, 0, 0], t1 = [0, 1, 0]
    # student (after /T_S): s0 = [0, 0, 0]       -> softmax [1/3, 1/3, 1/3]
    #                       s1 = [ln2, 0, 0]     -> softmax [1/2, 1/4, 1/4]
    #                       s2 = [0, ln3, 0]     -> softmax [1/5, 3/5, 1/5]   (a local crop)
    # pairs (i != j): (t0,s1) = ln 2, (t0,s2) = ln 5, (t1,s0) = ln 3, (t1,s2) = ln(5/3)
    # mean = (ln2 + ln5 + ln3 + ln5 - ln3) / 4 = ln(50) / 4
    student = [
        torch.tensor([[0.0, 0.0, 0.0]]) * T_S,
        torch.tensor([[math.log(2), 0.0, 0.0]]) * T_S,
        torch.tensor([[0.0, math.log(3), 0.0]]) * T_S,
    ]
    teacher = [_one_hot(0), _one_hot(1)]
    loss = DINOLoss(out_dim=3, student_temp=T_S)(student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(50) / 4, rel=1e-6)


def test_dino_loss_averages_over_the_batch():
    torch.manual_seed(0)
    loss_fn = DINOLoss(out_dim=5)
    student = [torch.randn(4, 5) for _ in range(4)]
    teacher = [torch.softmax(torch.randn(4, 5), dim=-1) for _ in range(2)]
    per_row = [loss_fn([s[b : b + 1] for s in student], [t[b : b + 1] for t in teacher]) for b in range(4)]
    assert loss_fn(student, teacher).item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-6)


def test_dino_loss_equals_dinov2_normalisation():
    # DINOv2 ssl_meta_arch: global term over swapped teacher crops * 2 / n_terms, local term / n_terms,
    # with n_terms = 2 * (2 - 1) + 2 * n_local. Written out independently here.
    torch.manual_seed(1)
    b, k, n_local = 3, 7, 4
    loss_fn = DINOLoss(out_dim=k)
    globals_ = [torch.randn(b, k) for _ in range(2)]
    locals_ = [torch.randn(b, k) for _ in range(n_local)]
    teacher = [torch.softmax(torch.randn(b, k) / 0.04, dim=-1) for _ in range(2)]

    def ce(t, s):
        return -(t * F.log_softmax(s / T_S, dim=-1)).sum(-1).mean()

    n_terms = 2 + 2 * n_local
    swapped = [teacher[1], teacher[0]]
    global_term = torch.cat([ce(swapped[i], globals_[i]).reshape(1) for i in range(2)]).mean() * 2 / n_terms
    local_term = sum(ce(t, s) for s in locals_ for t in teacher) / n_terms
    expected = global_term + local_term
    assert loss_fn(globals_ + locals_, teacher).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dino_loss_is_fp32_and_differentiable_from_bf16():
    student = [torch.randn(2, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    teacher = [torch.softmax(torch.randn(2, 4), -1).bfloat16() for _ in range(2)]
    loss = DINOLoss(out_dim=4)(student, teacher)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad.float()).all() for s in student)


def test_dino_loss_rejects_mismatched_shapes():
    loss_fn = DINOLoss(out_dim=3)
    with pytest.raises(ValueError, match=r"student_logits\[2\]"):
        loss_fn([torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(1, 3)], [torch.ones(2, 3) / 3] * 2)
    with pytest.raises(ValueError, match="out_dim"):
        loss_fn([torch.zeros(2, 4)] * 2, [torch.ones(2, 4) / 4] * 2)
    with pytest.raises(ValueError, match="at least 2 crops"):
        loss_fn([torch.zeros(2, 3)], [torch.ones(2, 3) / 3])
