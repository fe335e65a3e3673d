"""Gram anchoring's loss (dinolite/losses/gram_loss.py): hand-computed values for each option, the values and
gradients DINOv3's released ``GramLoss`` computes (tests/fixtures/released/gram_loss.json), and its checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinolite.losses.gram_loss import GramLoss, gram_matrix

RELEASED = json.loads((Path(__file__).parents[1] / "fixtures" / "released" / "gram_loss.json").read_text())


def _t(rows: list[list[float]]) -> torch.Tensor:
    """One image's patch features (1, N, D), float64."""
    return torch.tensor([rows], dtype=torch.float64)


def test_hand_computed_values():
    orthogonal, parallel = _t([[1.0, 0.0], [0.0, 1.0]]), _t([[1.0, 0.0], [1.0, 0.0]])
    # cosine Grams I and all-ones differ in the 2 off-diagonal entries of 4: mean = 2 / 4
    assert GramLoss()(orthogonal, parallel).item() == pytest.approx(0.5, abs=1e-15)
    # normalisation removes the patch norms ...
    assert GramLoss()(_t([[2.0, 0.0], [0.0, 3.0]]), parallel).item() == pytest.approx(0.5, abs=1e-15)
    # ... without it the raw inner products diag(4, 9) meet all-ones: (3^2 + 8^2 + 1 + 1) / 4
    unnormalized = GramLoss(normalize=False)(_t([[2.0, 0.0], [0.0, 3.0]]), parallel)
    assert unnormalized.item() == pytest.approx(75 / 4, abs=1e-12)
    # the same structure is no loss, whatever the features themselves are
    rotated = _t([[0.6, 0.8], [-0.8, 0.6]])
    assert GramLoss()(rotated, orthogonal).item() == pytest.approx(0.0, abs=1e-15)


def test_negative_similarities_are_removed_as_the_release_does():
    opposite, orthogonal = _t([[1.0, 0.0], [-1.0, 0.0]]), _t([[1.0, 0.0], [0.0, 1.0]])
    # student Gram [[1, -1], [-1, 1]] against I: two entries of 1
    assert GramLoss()(opposite, orthogonal).item() == pytest.approx(0.5, abs=1e-15)
    # remove_neg clamps the student's -1 entries to 0: identical matrices
    assert GramLoss(remove_neg=True)(opposite, orthogonal).item() == pytest.approx(0.0, abs=1e-15)
    # remove_only_teacher_neg leaves the student's negatives (the release's mask never selects them) ...
    assert GramLoss(remove_only_teacher_neg=True)(opposite, orthogonal).item() == pytest.approx(0.5, abs=1e-15)
    # ... and clamps the teacher's
    assert GramLoss(remove_only_teacher_neg=True)(orthogonal, opposite).item() == pytest.approx(0.0, abs=1e-15)
    assert GramLoss()(orthogonal, opposite).item() == pytest.approx(0.5, abs=1e-15)


def test_image_level_against_batch_level():
    # two images of one patch each: per image every Gram is [[1]]; over the batch they are I against ones
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    teacher = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64)
    assert GramLoss(img_level=True)(student, teacher).item() == pytest.approx(0.0, abs=1e-15)
    assert GramLoss(img_level=False)(student, teacher).item() == pytest.approx(0.5, abs=1e-15)
    assert gram_matrix(student, img_level=True).shape == (2, 1, 1)
    assert gram_matrix(student, img_level=False).shape == (2, 2)
    # selected patches (M, D) are compared at the batch level
    assert GramLoss(img_level=False)(student[:, 0], teacher[:, 0]).item() == pytest.approx(0.5, abs=1e-15)


def _released_inputs(b: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(b * n * d, dtype=torch.float64).reshape(b, n, d)
    student = torch.sin(1.3 * k) * (1 + k % 5) / 3
    teacher = torch.cos(0.7 * k + 0.2) * (1 + k % 3) / 2 + 0.5 * student
    return student.float(), teacher.float()


@pytest.mark.parametrize("case", RELEASED["cases"], ids=lambda c: "-".join(f"{k}={v}" for k, v in c["options"].items()))
def test_the_value_and_gradient_of_the_released_code(case):
    student, teacher = _released_inputs(*case["shape"])
    student.requires_grad_(True)
    options = case["options"]
    loss = GramLoss(
        normalize=options["normalized"],
        img_level=options["img_level"],
        remove_neg=options["remove_neg"],
        remove_only_teacher_neg=options["remove_only_teacher_neg"],
    )(student, teacher)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(case["loss"], rel=1e-6)
    assert student.grad.abs().sum().item() == pytest.approx(case["grad_abs_sum"], rel=1e-5)
    torch.testing.assert_close(student.grad[0, 0, :3], torch.tensor(case["grad_first"]), rtol=1e-5, atol=1e-8)


def test_low_precision_is_computed_in_fp32_and_float64_stays():
    student, teacher = _released_inputs(2, 9, 6)
    low = GramLoss()(student.bfloat16(), teacher.bfloat16())
    assert low.dtype == torch.float32
    assert GramLoss()(student.double(), teacher.double()).dtype == torch.float64


def test_bad_inputs_and_settings_are_refused():
    with pytest.raises(ValueError, match="cannot both be true"):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match="same shape"):
        GramLoss()(torch.ones(1, 4, 3), torch.ones(1, 9, 3))
    with pytest.raises(ValueError, match="img_level=True needs per-image"):
        GramLoss(img_level=True)(torch.ones(4, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"\(B, N, D\) or \(M, D\)"):
        gram_matrix(torch.ones(3))
