"""dinolite/train/precision.py: ``train.compute_precision`` to the autocast dtype and its context."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError
from dinolite.train.precision import autocast_context, autocast_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "precision, device, dtype",
    [
        ("auto", CPU, None),
        ("auto", CUDA, torch.bfloat16),
        ("fp32", CUDA, None),
        ("bf16", CPU, torch.bfloat16),
        ("fp16", CPU, torch.float16),
    ],
)
def test_the_dtype_of_each_setting(precision: str, device: torch.device, dtype: torch.dtype | None) -> None:
    assert autocast_dtype(precision, device) == dtype


def test_an_unknown_setting_names_the_key_the_value_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"train.compute_precision: 'fp8' is not one of auto, bf16, fp16, fp32"):
        autocast_dtype("fp8", CPU)


def test_the_context_runs_matmuls_in_the_dtype_and_fp32_is_untouched() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(torch.bfloat16, CPU):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(None, CPU):
        assert torch.equal(a @ b, torch.mm(a, b)) and (a @ b).dtype == torch.float32
