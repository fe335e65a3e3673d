"""The one dtype rule the losses, models and trainer share: compute in at least float32.

Losses, centring statistics and gradient norms are computed in float32 when their inputs are bf16/fp16
(autocast, mixed-precision FSDP), as DINOv2 does with its explicit ``.float()`` casts. A plain
``.float()`` would also *down*cast a float64 run, which would then hold float32 rounding in the middle
of a float64 step: the float64 golden step (tests/train/test_golden_step.py) relies on a float64 run
staying float64 throughout. :func:`at_least_float32` is ``.float()`` for bf16/fp16/float32 inputs (for
float32 it returns the tensor itself, so float32 results are the same bits) and keeps float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for a narrower dtype (bf16, fp16, integers, bool), else ``dtype`` itself (float64)."""
    return torch.promote_types(dtype, torch.float32)


def at_least_float32(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 when its dtype is narrower (bf16, fp16, integers), else unchanged (float64)."""
    return tensor.to(at_least_float32_dtype(tensor.dtype))
