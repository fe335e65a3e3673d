"""Clipping by the global L2 norm of gradients that FSDP2 shards over processes (or plain gradients).

torch's ``clip_grad_norm_`` sums the norms of the tensors it is given; a DTensor gradient's local shard
covers only part of the parameter, so here each shard's squared norm is all-reduced over the mesh
dimensions it is sharded on before the square root (replicated dimensions are counted once). Every rank
gets the same norm and the same scale.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from dinolite.dtypes import at_least_float32, at_least_float32_dtype
from dinolite.fsdp.sharding import local_shard


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients in place so that their global L2 norm is at most ``max_norm``; returns that norm.

    ``norm = sqrt(sum_p ||g_p||^2)`` over the *full* gradients: for a DTensor gradient the squared norm
    of the local shard is summed over every mesh dimension it is sharded on (one all-reduce per distinct
    (mesh, dims)), replicated dimensions are counted once. Plain tensors are taken as they are.
    Scale = ``min(1, max_norm / (norm + 1e-6))`` as in ``torch.nn.utils.clip_grad_norm_``. Returns the
    norm before clipping as a 0-dim fp32 tensor (fp64 for fp64 gradients) on the gradients' device;
    ``max_norm <= 0`` only measures.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    local_grads = [local_shard(g) for g in grads]
    device = local_grads[0].device
    buckets: dict[tuple, list[torch.Tensor]] = {}
    meshes: dict[tuple, tuple[DeviceMesh, tuple[int, ...]]] = {}
    for grad, local in zip(grads, local_grads):
        if isinstance(grad, DTensor):
            dims = tuple(i for i, p in enumerate(grad.placements) if p.is_shard())
            key = (id(grad.device_mesh), dims)
            meshes[key] = (grad.device_mesh, dims)
        else:
            key = ("plain",)
        buckets.setdefault(key, []).append(local)
    total_sq = torch.zeros((), dtype=at_least_float32_dtype(local_grads[0].dtype), device=device)
    for key, tensors in buckets.items():
        norms = torch._foreach_norm([at_least_float32(t) for t in tensors]) if tensors else []
        bucket_sq = torch.stack([n * n for n in norms]).sum()
        if key != ("plain",):
            mesh, dims = meshes[key]
            for dim in dims:
                dist.all_reduce(bucket_sq, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
        total_sq = total_sq + bucket_sq
    total_norm = total_sq.sqrt()
    if max_norm > 0 and math.isfinite(float(total_norm)):
        scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(local_grads, scale.to(local_grads[0].dtype))
    return total_norm
