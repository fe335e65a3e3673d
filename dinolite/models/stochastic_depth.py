"""Stochastic depth (Huang et al., 2016, "Deep Networks with Stochastic Depth").

Each residual branch ``f`` of a block is skipped for a random subset of the samples during training,
and scaled so its expectation is unchanged: ``x + f(x) * keep / (1 - p)``.

Two equivalent-in-expectation forms, as in DINOv2:

- :class:`DropPath`: computes ``f`` for every sample and zeroes a Bernoulli(p) subset, scaling the
  rest by ``1 / (1 - p)``.
- :func:`drop_add_residual_stochastic_depth`: computes ``f`` only on a random subset of
  ``max(int(B * (1 - p)), 1)`` samples and adds it scaled by ``B / subset``; it saves the compute of
  the dropped samples, which DINOv2 finds worth it when ``p > 0.1``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def drop_path_rates(drop_path_rate: float, depth: int, uniform: bool) -> list[float]:
    """Per-block drop rates: all ``drop_path_rate`` when ``uniform``, else linear from 0 to the rate."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
    if uniform:
        return [drop_path_rate] * depth
    if depth == 1:
        return [0.0]
    # Plain Python, not torch.linspace: the model may be built under a 'meta' device context.
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Zero the whole residual of a sample with probability ``drop_prob`` (training only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_add_residual_stochastic_depth(
    x: Tensor, residual_func: Callable[[Tensor], Tensor], sample_drop_ratio: float
) -> Tensor:
    """``x`` with ``residual_func`` added, scaled by ``B / subset``, on a random subset of the samples."""
    batch = x.shape[0]
    subset_size = max(int(batch * (1.0 - sample_drop_ratio)), 1)
    chosen = torch.randperm(batch, device=x.device)[:subset_size]
    residual = residual_func(x[chosen])
    out = torch.index_add(x.flatten(1), 0, chosen, residual.flatten(1).to(x.dtype), alpha=batch / subset_size)
    return out.view_as(x)
