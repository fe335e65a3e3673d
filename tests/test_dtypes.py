"""dinolite/dtypes.py: compute in at least float32, and never downcast float64."""

from __future__ import annotations

import pytest
import torch

from dinolite.dtypes import at_least_float32, at_least_float32_dtype


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.float32),
        (torch.bool, torch.float32),
    ],
)
def test_the_compute_dtype(dtype: torch.dtype, expected: torch.dtype) -> None:
    assert at_least_float32_dtype(dtype) == expected


def test_float32_comes_back_as_the_same_tensor_and_float64_keeps_its_bits() -> None:
    x32 = torch.randn(3)
    assert at_least_float32(x32) is x32
    x64 = torch.tensor([1.0 + 2.0**-40], dtype=torch.float64)
    assert at_least_float32(x64).dtype == torch.float64 and at_least_float32(x64).item() == 1.0 + 2.0**-40


def test_half_precision_is_widened_exactly() -> None:
    x = torch.tensor([0.1, -3.5, 1000.0], dtype=torch.bfloat16)
    wide = at_least_float32(x)
    assert wide.dtype == torch.float32 and torch.equal(wide.to(torch.bfloat16), x)
