"""From one step's measured cost to what a cluster run will do: time, img/s, MFU, fit, advice.

The time model, stated so it can be checked against the first real runs:

* compute: the step's FLOPs at ``efficiency`` times the datasheet peak of the step's matmul precision
  (default 0.5: achieved/peak of large bf16 transformer training on A100/H100 is typically 0.4-0.6);
* communication: each collective moves ``(n-1)/n`` of its buffer per rank for all-gather and
  reduce-scatter and ``2 (n-1)/n`` for all-reduce (ring algorithms), at NVLink speed when its group
  stays inside a node and at the network speed per GPU when it spans nodes;
* FSDP2 prefetches the next block's all-gather and overlaps reduce-scatters with backward, so the
  predicted step is ``max(compute, communication)``; ``compute + communication`` is the no-overlap bound.

Memory: the run fits when the predicted peak is at most ``usable`` (default 0.9) of the card's memory;
the rest is the CUDA context, NCCL's buffers and the caching allocator's fragmentation, which the fake
step cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinolite.plan.fake_step import StepCost
from dinolite.plan.hardware import GPU

DEFAULT_EFFICIENCY = 0.5
DEFAULT_USABLE = 0.9


@dataclass(frozen=True)
class CollectiveTime:
    op: str
    group_size: int
    crosses_nodes: bool
    calls: int
    buffer_bytes: int
    wire_bytes: int  # what one rank sends (= receives) over the step
    seconds: float


@dataclass(frozen=True)
class Prediction:
    precision_key: str
    peak_tflops: float
    compute_s: float
    comm_s: float
    step_s: float
    no_overlap_s: float
    images_per_s_per_gpu: float
    images_per_s: float
    mfu: float
    collectives: tuple[CollectiveTime, ...]
    capacity_bytes: int
    usable_bytes: int
    fits: bool
    advice: tuple[str, ...]


def precision_key(dtype: torch.dtype | None) -> str:
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "tf32" if torch.get_float32_matmul_precision() != "highest" else "fp32"


def _wire_factor(op: str, n: int) -> float:
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def collective_times(cost: StepCost, gpu: GPU, network_gbs: float | None = None) -> tuple[CollectiveTime, ...]:
    network = network_gbs if network_gbs is not None else gpu.network_gbs
    rows = []
    for c in cost.collectives:
        nodes = {rank // cost.processes_per_node for rank in c.group_ranks}
        crosses = len(nodes) > 1
        wire = int(c.buffer_bytes * _wire_factor(c.op, len(c.group_ranks)))
        seconds = wire / ((network if crosses else gpu.nvlink_gbs) * 1e9)
        rows.append(CollectiveTime(c.op, len(c.group_ranks), crosses, c.calls, c.buffer_bytes, wire, seconds))
    return tuple(rows)


def predict(
    cost: StepCost,
    gpu: GPU,
    *,
    efficiency: float = DEFAULT_EFFICIENCY,
    usable: float = DEFAULT_USABLE,
    network_gbs: float | None = None,
    activation_checkpointing: bool = False,
    strategy: str = "full_shard",
) -> Prediction:
    key = precision_key(cost.precision)
    peak = gpu.peak_tflops[key]
    compute = cost.flops / (peak * 1e12 * efficiency)
    rows = collective_times(cost, gpu, network_gbs)
    comm = sum(r.seconds for r in rows)
    step = max(compute, comm)
    per_gpu = cost.batch_size_per_gpu / step if step > 0 else float("inf")
    capacity = int(gpu.memory_gib * 2**30)
    usable_bytes = int(capacity * usable)
    fits = cost.peak_bytes <= usable_bytes
    return Prediction(
        precision_key=key,
        peak_tflops=peak,
        compute_s=compute,
        comm_s=comm,
        step_s=step,
        no_overlap_s=compute + comm,
        images_per_s_per_gpu=per_gpu,
        images_per_s=per_gpu * cost.world_size,
        mfu=cost.flops / (step * peak * 1e12) if step > 0 else 0.0,
        collectives=rows,
        capacity_bytes=capacity,
        usable_bytes=usable_bytes,
        fits=fits,
        advice=advise(cost, usable_bytes, activation_checkpointing, strategy, comm > compute),
    )


def largest_batch(cost: StepCost, usable_bytes: int) -> int:
    """The largest per-GPU batch whose peak fits, taking what scales with the batch (activations,
    temporaries, inputs) as proportional to it and the rest (parameters, gradients, optimizer state,
    gathered parameters) as fixed."""
    split = cost.by_category
    per_batch = split.get("activations", 0) + split.get("temporary", 0) + split.get("inputs", 0)
    fixed = cost.peak_bytes - per_batch
    if per_batch <= 0:
        return cost.batch_size_per_gpu
    return max(0, int((usable_bytes - fixed) / (per_batch / cost.batch_size_per_gpu)))


def advise(
    cost: StepCost, usable_bytes: int, activation_checkpointing: bool, strategy: str, comm_bound: bool
) -> tuple[str, ...]:
    """What to change: nothing when it fits (except a communication-bound warning), else in order of
    what costs least throughput."""
    gib = 2**30
    lines = []
    if cost.peak_bytes > usable_bytes:
        over = (cost.peak_bytes - usable_bytes) / gib
        lines.append(f"does not fit: {over:.1f} GiB over the usable {usable_bytes / gib:.1f} GiB")
        if strategy in ("no_shard", "shard_grad_op"):
            lines.append(
                f"distributed.sharding_strategy=full_shard (or hybrid_shard across nodes): {strategy} keeps "
                "full parameters/gradients on every GPU"
            )
        if not activation_checkpointing:
            lines.append(
                "distributed.activation_checkpointing=true: blocks keep only their inputs and recompute the "
                "rest in backward (about a third more compute)"
            )
        batch = largest_batch(cost, usable_bytes)
        if batch < cost.batch_size_per_gpu:
            lines.append(
                f"train.batch_size_per_gpu={batch} fits as it stands (now {cost.batch_size_per_gpu}; activations "
                "scale with the batch)"
                if batch > 0
                else "the per-GPU batch cannot be reduced enough: parameters, gradients and optimizer state "
                "alone do not fit; use more GPUs (more shards) or full_shard"
            )
    if comm_bound:
        lines.append(
            "communication-bound: the collectives take longer than the compute; hybrid_shard keeps the "
            "all-gathers inside a node, a larger batch per GPU amortises them"
        )
    return tuple(lines)
