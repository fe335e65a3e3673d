"""Distributed plumbing below everything else: who this process is, the process group, and collectives.

``env``: detect torchrun / Slurm / single-process environments and create or destroy the process group.
``collectives``: rank queries and reductions that are no-ops without a process group.
``autograd``: all-gather / all-reduce that gradients flow through (global-batch statistics of losses).
Nothing here imports another dinolite package.
"""

from dinolite.distributed.autograd import all_gather_with_grad, all_reduce_sum_with_grad
from dinolite.distributed.collectives import (
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    barrier,
    get_rank,
    get_world_size,
    is_distributed,
    rank_and_world,
)
from dinolite.distributed.env import (
    DistributedEnv,
    DistributedEnvError,
    destroy_distributed,
    detect_environment,
    distributed_session,
    init_distributed,
    is_main_process,
    parse_slurm_nodelist,
    resolve_backend,
    resolve_device,
    slurm_port_from_job_id,
)

__all__ = [
    "DistributedEnv",
    "DistributedEnvError",
    "all_gather_with_grad",
    "all_reduce_max",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "any_rank",
    "barrier",
    "destroy_distributed",
    "detect_environment",
    "distributed_session",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "parse_slurm_nodelist",
    "rank_and_world",
    "resolve_backend",
    "resolve_device",
    "slurm_port_from_job_id",
]
