"""Collectives that autograd can differentiate through: the global-batch statistics of SSL losses.

Convention (the one the trainer's gradient reduction implies). FSDP2 averages parameter gradients over
the ``W`` ranks, so training minimises ``J = (1/W) * sum_r loss_r`` where ``loss_r`` is what rank ``r``
back-propagates. For ``J``'s gradient to reach every rank's inputs, the backward of a collective must
be its adjoint with respect to *all* ranks' losses:

* ``all_gather_with_grad(x)``: every rank gets ``cat(x_0, ..., x_{W-1})``; backward sums the incoming
  gradients over ranks (all-reduce SUM) and returns this rank's slice, i.e. the gradient of
  ``sum_s loss_s`` with respect to ``x_r``.
* ``all_reduce_sum_with_grad(x)``: every rank gets ``sum_s x_s``; backward all-reduces (SUM) the
  incoming gradient.

With these, a rank loss that is the mean over its own rows of a function of the global batch (SimCLR's
InfoNCE with negatives from every rank) or a function of global sums that every rank computes
identically (Barlow Twins' cross-correlation, global BatchNorm statistics) gives, after the averaging
of parameter gradients, exactly the gradient of the same loss on one process holding the whole batch
(``tests/losses/test_distributed_joint_embedding.py``). All ranks must call them at the same point, with
the same shapes (all_gather needs equal row counts). Without a process group both are identities.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dinolite.distributed.collectives import get_world_size


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order; gradients flow back to their owners.

    Every rank must pass the same shape. One process: ``x`` itself.
    """
    if get_world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """``sum over ranks of x`` on every rank, differentiable (see the module docstring). One process: ``x``."""
    if get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x)
