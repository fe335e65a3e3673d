"""PIRL's NCE loss against a memory bank (dinolite/losses/pirl_loss.py): a hand value, Eq. 5's convex
combination against a loop-by-loop reference, no gradient to the memories, and errors that name the fault."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolite.losses import PIRLLoss
from dinolite.losses.pirl_loss import memory_logits, nce_memory_loss


def reference_nce(embedding: torch.Tensor, memory: torch.Tensor, slots: torch.Tensor, tau: float) -> float:
    """-log h(m_I, v) / (h(m_I, v) + sum_negatives h(m', v)), h = exp(<m, v> / tau), averaged: plain loops."""
    total = 0.0
    for b in range(embedding.shape[0]):
        v = F.normalize(embedding[b].double(), dim=0)
        h = [math.exp(float(memory[int(s)].double() @ v) / tau) for s in slots[b]]
        total += -math.log(h[0] / sum(h))
    return total / embedding.shape[0]


def test_hand_value_for_one_image_with_two_negatives():
    """v = (1, 0); own memory (1, 0), negatives (0, 1) and (-1, 0); tau 1: logits (1, 0, -1), loss
    -log(e / (e + 1 + 1/e))."""
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    slots = torch.tensor([[0, 1, 2]])
    embedding = torch.tensor([[3.0, 0.0]])  # normalised inside PIRLLoss; nce_memory_loss takes unit rows
    torch.testing.assert_close(
        memory_logits(F.normalize(embedding), memory, slots, 1.0), torch.tensor([[1.0, 0.0, -1.0]])
    )
    e = math.e
    expected = -math.log(e / (e + 1 + 1 / e))
    assert nce_memory_loss(F.normalize(embedding), memory, slots, 1.0).item() == pytest.approx(expected, rel=1e-6)
    out = PIRLLoss(temperature=1.0, jigsaw_weight=0.5)(embedding, embedding, memory, slots, slots)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.8, 1.0])
def test_loss_is_lambda_jigsaw_plus_one_minus_lambda_image(lam: float):
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(20, 8), dim=1)
    jigsaw, image = torch.randn(5, 8), torch.randn(5, 8)
    own = torch.arange(5)
    jigsaw_slots = torch.cat([own[:, None], torch.randint(0, 20, (5, 7))], dim=1)
    image_slots = torch.cat([own[:, None], torch.randint(0, 20, (5, 7))], dim=1)
    out = PIRLLoss(temperature=0.07, jigsaw_weight=lam)(jigsaw, image, memory, jigsaw_slots, image_slots)
    want_jigsaw = reference_nce(jigsaw, memory, jigsaw_slots, 0.07)
    want_image = reference_nce(image, memory, image_slots, 0.07)
    assert out["jigsaw_loss"].item() == pytest.approx(want_jigsaw, rel=1e-5)
    assert out["image_loss"].item() == pytest.approx(want_image, rel=1e-5)
    assert out["loss"].item() == pytest.approx(lam * want_jigsaw + (1 - lam) * want_image, rel=1e-5)


def test_gradients_reach_the_embeddings_not_the_memory():
    memory = F.normalize(torch.randn(10, 4), dim=1).requires_grad_(True)
    jigsaw, image = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    slots = torch.tensor([[0, 5, 6], [1, 7, 8], [2, 9, 3]])
    PIRLLoss()(jigsaw, image, memory, slots, slots)["loss"].backward()
    assert memory.grad is None
    assert jigsaw.grad.abs().sum() > 0 and image.grad.abs().sum() > 0


def test_bf16_embeddings_are_scored_in_fp32():
    memory = F.normalize(torch.randn(10, 4), dim=1)
    x = torch.randn(3, 4)
    slots = torch.tensor([[0, 5, 6], [1, 7, 8], [2, 9, 3]])
    out = PIRLLoss()(x.bfloat16(), x.bfloat16(), memory, slots, slots)["loss"]
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_nce(x.bfloat16().float(), memory, slots, 0.07), rel=1e-4)


def test_errors_name_the_fault():
    with pytest.raises(ValueError, match="temperature"):
        PIRLLoss(temperature=0.0)
    with pytest.raises(ValueError, match="lambda"):
        PIRLLoss(jigsaw_weight=1.5)
    memory = torch.eye(4)
    with pytest.raises(ValueError, match="positives"):
        PIRLLoss()(
            torch.randn(2, 4), torch.randn(2, 4), memory, torch.tensor([[0, 1], [1, 2]]), torch.tensor([[1, 1], [1, 2]])
        )
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        PIRLLoss()(
            torch.randn(2, 4),
            torch.randn(2, 3),
            memory,
            torch.zeros(2, 2, dtype=torch.long),
            torch.zeros(2, 2, dtype=torch.long),
        )
