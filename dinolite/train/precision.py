"""``train.compute_precision`` -> the autocast dtype of a run's forward pass, and its context.

``auto`` is bf16 on CUDA and fp32 on CPU; fp16 trains with loss scaling
(:mod:`dinolite.train.loss_scaling`). The same dtype is FSDP2's mixed-precision policy when the objective
is sharded (:func:`dinolite.fsdp.sharding.shard_objective`).
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from dinolite.config import ConfigError


def autocast_dtype(compute_precision: str, device: torch.device) -> torch.dtype | None:
    """``auto`` -> bf16 on CUDA and fp32 (no autocast) on CPU; ``bf16``/``fp16``/``fp32`` as asked (fp16
    trains with loss scaling, :mod:`dinolite.train.loss_scaling`)."""
    if compute_precision == "fp32":
        return None
    if compute_precision == "bf16":
        return torch.bfloat16
    if compute_precision == "fp16":
        return torch.float16
    if compute_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    raise ConfigError(f"train.compute_precision: {compute_precision!r} is not one of auto, bf16, fp16, fp32")


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> ContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on the device type, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
