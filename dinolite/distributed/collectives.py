"""Rank queries and scalar collectives that are no-ops without a process group.

Every module that needs to know "is there a process group, which rank am I, how many are we" asks here,
so that single-process runs (CPU smoke runs, evaluation, tests) and distributed runs share one code path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """A default process group exists (``torch.distributed`` is built in and initialised)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes in the default group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank_and_world() -> tuple[int, int]:
    return get_rank(), get_world_size()


def all_reduce_max(value: float, device: torch.device | str = "cpu") -> float:
    """The maximum of ``value`` over all ranks (``value`` itself without a process group).

    ``device`` must be the process's CUDA device under NCCL (NCCL cannot reduce CPU tensors).
    """
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_sum(value: float, device: torch.device | str = "cpu") -> float:
    """The sum of ``value`` over all ranks (``value`` itself without a process group)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on at least one rank: how ranks agree to stop together."""
    return all_reduce_max(1.0 if flag else 0.0, device) > 0.0


def barrier(device: torch.device | str = "cpu") -> None:
    """Wait for every rank (no-op without a process group)."""
    if not is_distributed():
        return
    device = torch.device(device)
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()
