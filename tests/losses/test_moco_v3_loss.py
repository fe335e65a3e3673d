"""MoCo v3's loss against hand computations and against its Alg. 1 written as loops. Two processes against
one: tests/losses/test_distributed_joint_embedding.py; against the released code:
tests/methods/test_released_mocov3.py."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import InfoNCELoss, MoCoV3Loss, moco_v3_loss
from dinolite.losses.moco_v3_loss import moco_v3_contrastive


def _batch(n: int = 6, d: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]


def reference(q_a, q_b, k_a, k_b, tau):
    """Alg. 1 of the paper as loops: per direction, 2 tau times the mean over queries of -log softmax at the
    query's own image over all keys of the other view; the two directions summed."""

    def unit(rows):
        return [r / r.norm() for r in rows]

    total = 0.0
    for queries, keys in ((unit(q_a), unit(k_b)), (unit(q_b), unit(k_a))):
        direction = 0.0
        for n, q in enumerate(queries):
            denominator = sum(math.exp(float(q @ k) / tau) for k in keys)
            direction += -math.log(math.exp(float(q @ keys[n]) / tau) / denominator)
        total += 2 * tau * direction / len(queries)
    return total


@pytest.mark.parametrize(
    ("tau", "expected"), [(1.0, 4 * math.log(1 + 1 / math.e)), (0.5, 2 * math.log(1 + math.e**-2))]
)
def test_hand_computed(tau, expected):
    # two orthogonal images, queries = keys: each query has its positive at cos 1 and one negative at cos 0, so
    # each direction is 2 tau log(1 + exp(-1 / tau)), and the loss the sum of the two directions
    z = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    assert moco_v3_loss(z, z, z, z, tau).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_matches_reference(tau):
    q_a, q_b, k_a, k_b = _batch()
    loss = MoCoV3Loss(tau)(q_a, q_b, k_a, k_b)
    assert loss.item() == pytest.approx(reference(q_a, q_b, k_a, k_b, tau), rel=1e-9)
    # not SimCLR's NT-Xent of the same views: other negatives (no same-view keys) and the 2 tau scale
    assert loss.item() / 2 != pytest.approx(InfoNCELoss(tau)(q_a, k_b).item(), rel=1e-3)


def test_directions_sum_and_directed():
    q_a, q_b, k_a, k_b = _batch()
    loss = MoCoV3Loss(0.2)
    both = loss(q_a, q_b, k_a, k_b)
    torch.testing.assert_close(both, loss.directed(q_a, k_b) + loss.directed(q_b, k_a))
    # 2 tau times the plain cross-entropy of the cosine logits
    logits = torch.nn.functional.normalize(q_a, dim=1) @ torch.nn.functional.normalize(k_b, dim=1).t() / 0.2
    plain = torch.nn.functional.cross_entropy(logits, torch.arange(6))
    torch.testing.assert_close(moco_v3_contrastive(q_a, k_b, 0.2), 0.4 * plain)


def test_keys_get_no_gradient_queries_do():
    q_a, q_b, k_a, k_b = (t.clone().requires_grad_(True) for t in _batch())
    moco_v3_loss(q_a, q_b, k_a, k_b, 0.2).backward()
    assert k_a.grad is None and k_b.grad is None
    assert q_a.grad.abs().sum() > 0 and q_b.grad.abs().sum() > 0


def test_low_precision_inputs_computed_in_fp32():
    q_a, q_b, k_a, k_b = (t.float() for t in _batch())
    full = moco_v3_loss(q_a, q_b, k_a, k_b, 0.2)
    half = moco_v3_loss(*(t.bfloat16() for t in (q_a, q_b, k_a, k_b)), 0.2)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


def test_bad_inputs_are_named():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"moco_v3_loss: queries and keys must both be \(B, D\)"):
        moco_v3_loss(q, q, q, torch.randn(4, 2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        moco_v3_loss(q, q, q, q, 0.0)
    with pytest.raises(ValueError, match="MoCoV3Loss: temperature must be > 0"):
        MoCoV3Loss(-1.0)
