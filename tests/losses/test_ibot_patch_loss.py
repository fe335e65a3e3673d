"""iBOT masked-patch loss (dinolite.losses.ibot_patch_loss) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolite.losses import iBOTPatchLoss

T_S = 0.1


def test_ibot_loss_matches_hand_computation():
    # 4 global-crop images; image 0 has 1 masked patch (row 0), image 1 has 2 (rows 1, 2), 2 and 3 none.
    # one-hot teacher targets, student logits / T_S chosen so that the CE of each row is:
    #   row 0: softmax [1/2, 1/4, 1/4], target 0 -> ln 2
    #   row 1: softmax [1/3, 1/3, 1/3], target 2 -> ln 3
    #   row 2: softmax [1/5, 3/5, 1/5], target 0 -> ln 5
    # weights 1/#masked: [1, 1/2, 1/2]; loss = (ln2 + (ln3 + ln5)/2) / 4
    student = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, math.log(3), 0.0]]) * T_S
    teacher = F.one_hot(torch.tensor([0, 2, 0]), 3).float()
    weights = torch.tensor([1.0, 0.5, 0.5])
    loss = iBOTPatchLoss(out_dim=3, student_temp=T_S).forward_masked(student, teacher, weights, n_images=4)
    expected = (math.log(2) + (math.log(3) + math.log(5)) / 2) / 4
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ibot_loss_equals_dense_per_image_mean():
    # the masked form equals "mean over images of the mean CE over that image's masked patches"
    # (DINOv2's dense `forward`, images without masks contributing 0), written out densely here.
    torch.manual_seed(0)
    n_images, n_patches, k = 3, 5, 6
    masks = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    student_dense = torch.randn(n_images, n_patches, k)
    teacher_dense = torch.softmax(torch.randn(n_images, n_patches, k), dim=-1)
    ce = -(teacher_dense * F.log_softmax(student_dense / T_S, dim=-1)).sum(-1)
    dense = ((ce * masks).sum(-1) / masks.sum(-1).clamp(min=1)).mean()

    weights = (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    masked = iBOTPatchLoss(out_dim=k)(student_dense[masks], teacher_dense[masks], weights, n_images)
    assert masked.item() == pytest.approx(dense.item(), rel=1e-6)


def test_ibot_loss_with_no_masked_patch_is_zero_and_differentiable():
    student = torch.zeros(0, 4, requires_grad=True)
    loss = iBOTPatchLoss(out_dim=4)(student, torch.zeros(0, 4), torch.zeros(0), n_images=2)
    assert loss.item() == 0.0
    loss.backward()


def test_ibot_loss_rejects_bad_input():
    loss_fn = iBOTPatchLoss(out_dim=3)
    with pytest.raises(ValueError, match="masks_weight"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), n_images=2)
    with pytest.raises(ValueError, match="n_images"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), n_images=0)
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), n_images=2)
