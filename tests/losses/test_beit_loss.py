"""dinolite/losses/beit_loss.py: BEiT's cross-entropy over the masked patches (Bao et al. 2022, Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.losses import BEiTLoss


def test_hand_values_mean_over_the_masked_patches_only() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [9.0, 9.0, 9.0]], [[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]])
    tokens = torch.tensor([[0, 2], [1, 1]])
    masks = torch.tensor([[True, False], [True, True]])  # (0, 1) is visible: its logits never count
    first = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    second = math.log(3.0)
    third = -(3.0 - math.log(math.exp(1.0) + math.exp(3.0) + 1.0))
    expected = (first + second + third) / 3
    assert BEiTLoss()(logits, tokens, masks).item() == pytest.approx(expected, rel=1e-6)
    # the same value from the masked rows selected beforehand (what the objective passes)
    assert BEiTLoss()(logits[masks], tokens[masks]).item() == pytest.approx(expected, rel=1e-6)


def test_perfect_predictions_give_zero_and_gradients_reach_masked_logits_only() -> None:
    tokens = torch.tensor([[1, 0]])
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    loss = BEiTLoss()(logits, tokens, torch.tensor([[True, False]]))
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    confident = torch.tensor([[[-50.0, 50.0]]])
    assert BEiTLoss()(confident, torch.tensor([[1]]), torch.tensor([[True]])).item() == pytest.approx(0.0, abs=1e-6)


def test_mismatched_shapes_and_no_masked_patch_are_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        BEiTLoss()(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no patch is masked"):
        BEiTLoss()(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool))
