"""Clipping by the global gradient norm: torch's on plain tensors; over FSDP2 shards it is the same norm
(tests/train/test_loss_scaling.py and the two-rank runs of test_sharding.py, through scale_worker.py)."""

from __future__ import annotations

import torch
from torch import nn

from dinolite.fsdp.clipping import clip_grad_norm_


def test_clip_grad_norm_matches_torch_for_plain_tensors():
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    expected = [p.grad.clone() for p in params]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for twin, g in zip(twins, expected):
        twin.grad = g.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(twins, 1.0)
    by_hand = torch.sqrt(sum((g**2).sum() for g in expected))
    norm = clip_grad_norm_(params, 1.0)
    torch.testing.assert_close(norm, by_hand)
    torch.testing.assert_close(norm, torch_norm)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g * (1.0 / (by_hand + 1e-6)))
    for p, twin in zip(params, twins):
        torch.testing.assert_close(p.grad, twin.grad)
    assert torch.isclose(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])), torch.tensor(1.0))
    small = [nn.Parameter(torch.ones(2))]
    small[0].grad = torch.full((2,), 0.1)
    clip_grad_norm_(small, 1.0)
    assert torch.equal(small[0].grad, torch.full((2,), 0.1))  # below the threshold: untouched


def test_max_norm_zero_measures_without_clipping_and_no_gradient_is_a_zero_norm():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.tensor([3.0, 0.0, 4.0])
    assert clip_grad_norm_(params, 0.0) == 5.0  # params[1] has no gradient: skipped
    assert torch.equal(params[0].grad, torch.tensor([3.0, 0.0, 4.0]))
    assert clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0) == 0.0
