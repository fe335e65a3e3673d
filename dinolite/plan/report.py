"""``dinolite-plan``'s work: the batch, the fake step, the prediction and the printed plan."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dinolite.config import Config
from dinolite.plan.estimate import Prediction, predict
from dinolite.plan.fake_step import StepCost, backbone_depth, measure_step
from dinolite.plan.hardware import GPU
from dinolite.plan.measure import CATEGORY_ORDER
from dinolite.train.methods import get_method

GIB = 2**30


@dataclass(frozen=True)
class Plan:
    config: str
    nodes: int
    gpus_per_node: int
    gpu: GPU
    cfg: Config
    cost: StepCost
    prediction: Prediction
    notes: tuple[str, ...]


def planned_config(cfg: Config) -> tuple[Config, tuple[str, ...]]:
    """``cfg`` as the fake step runs it, and what was changed: ``auto`` precision is bf16 on a GPU (the
    fake step runs on the CPU device, where ``auto`` means fp32); ``distributed.compile`` is left out
    (it fuses kernels; the planner predicts eager memory, an upper bound of the compiled one)."""
    notes = []
    train, distributed = cfg.train, cfg.distributed
    if train.compute_precision == "auto":
        train = dataclasses.replace(train, compute_precision="bf16")
        notes.append("train.compute_precision=auto is bf16 on a GPU: planned in bf16")
    if distributed.compile:
        distributed = dataclasses.replace(distributed, compile=False)
        notes.append("distributed.compile is not planned: the eager step's memory is an upper bound")
    return dataclasses.replace(cfg, train=train, distributed=distributed), tuple(notes)


def synthetic_batch(cfg: Config, seed: int = 0) -> dict[str, object]:
    """One collated batch of ``train.batch_size_per_gpu`` random images through the method's own view
    transform and collate (real tensors: masks decide shapes, e.g. iBOT's masked-token count)."""
    generator = torch.Generator().manual_seed(seed)
    method = get_method(cfg.train.method)
    transform, collate = method.build_transform(cfg), method.build_collate(cfg)
    size = cfg.crops.global_crops_size
    samples = [
        transform(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator), generator=generator)
        for _ in range(cfg.train.batch_size_per_gpu)
    ]
    return collate(samples, generator=generator)


def make_plan(
    cfg: Config,
    config_name: str,
    nodes: int,
    gpus_per_node: int,
    gpu: GPU,
    *,
    efficiency: float,
    usable: float,
    network_gbs: float | None = None,
    full_depth: bool = False,
) -> Plan:
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: both must be at least 1")
    planned, notes = planned_config(cfg)
    batch = synthetic_batch(planned)
    cost = measure_step(planned, nodes * gpus_per_node, gpus_per_node, batch, full_depth=full_depth)
    prediction = predict(
        cost,
        gpu,
        efficiency=efficiency,
        usable=usable,
        network_gbs=network_gbs,
        activation_checkpointing=planned.distributed.activation_checkpointing,
        strategy=planned.distributed.sharding_strategy,
    )
    return Plan(config_name, nodes, gpus_per_node, gpu, planned, cost, prediction, notes)


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def format_plan(plan: Plan, verbose: bool = False) -> str:
    """The plan as text (what ``dinolite-plan`` prints)."""
    cfg, cost, p, gpu = plan.cfg, plan.cost, plan.prediction, plan.gpu
    world = plan.nodes * plan.gpus_per_node
    sharding = cost.sharding
    mesh = "x".join(map(str, sharding.mesh_shape)) if sharding and sharding.mesh_shape else "none"
    measured = (
        f"depths {cost.extrapolated_from[0]} and {cost.extrapolated_from[1]} extrapolated to "
        f"{backbone_depth(cfg)} identical blocks (exact)"
        if cost.extrapolated_from
        else "every block"
    )
    lines = [
        f"dinolite-plan: {plan.config} ({cfg.train.method}, {cfg.student.arch}/{cfg.student.patch_size}) on "
        f"{plan.nodes} node(s) x {plan.gpus_per_node} {gpu.name} = {world} GPUs",
        f"  sharding {cfg.distributed.sharding_strategy} (mesh {mesh}), activation checkpointing "
        f"{'on' if cfg.distributed.activation_checkpointing else 'off'}, {p.precision_key} compute, batch "
        f"{cost.batch_size_per_gpu}/GPU ({cost.batch_size_per_gpu * world} global)",
        f"  one step of the real code on fake tensors, fake process group of {world} ranks; {measured}; "
        f"{cost.seconds:.0f} s",
        *[f"  note: {n}" for n in plan.notes],
        "",
        "peak memory per GPU, by category (at the moment of the peak)",
        *[f"  {name:<22}{_gib(cost.by_category.get(name, 0))}" for name in CATEGORY_ORDER],
        f"  {'total':<22}{_gib(cost.peak_bytes)}   of {gpu.memory_gib:.1f} GiB "
        f"({p.usable_bytes / GIB:.1f} usable): {'FITS' if p.fits else 'DOES NOT FIT'}",
        "",
        "collectives per step and GPU (ring: all-gather/reduce-scatter move (n-1)/n of the buffer, all-reduce 2(n-1)/n)",
    ]
    for c in p.collectives:
        where = "across nodes" if c.crosses_nodes else "in a node"
        lines.append(
            f"  {c.op:<15}x{c.calls:<5} group {c.group_size:<5} {where:<13}buffer {_gib(c.buffer_bytes)}  "
            f"sent {_gib(c.wire_bytes)}  {c.seconds * 1e3:8.1f} ms"
        )
    per_image = cost.flops / cost.batch_size_per_gpu
    lines += [
        "",
        f"FLOPs per image (forward + backward, torch.utils.flop_counter): {per_image / 1e12:.3f} TFLOP",
        f"predicted, at {p.peak_tflops:.0f} TFLOP/s {p.precision_key} datasheet peak x efficiency "
        f"{p.compute_s and cost.flops / (p.compute_s * p.peak_tflops * 1e12):.2f}:",
        f"  compute {p.compute_s * 1e3:.0f} ms, communication {p.comm_s * 1e3:.0f} ms -> step "
        f"{p.step_s * 1e3:.0f} ms (overlapped; {p.no_overlap_s * 1e3:.0f} ms without overlap)",
        f"  {p.images_per_s_per_gpu:.1f} img/s per GPU, {p.images_per_s:.0f} img/s in all, MFU {p.mfu:.0%}",
        f"  figures: {gpu.source}",
    ]
    if p.advice:
        lines += ["", "what to change:", *[f"  - {a}" for a in p.advice]]
    if verbose:
        lines += [
            "",
            "FLOPs by op:",
            *[f"  {k:<40}{v / 1e12:10.3f} TFLOP" for k, v in sorted(cost.flops_by_op.items())],
        ]
        lines += ["host reads of fake data answered 0/False (none decides a shape):"]
        lines += [f"  {site}: {count}" for site, count in sorted(cost.host_defaults.items())]
    return "\n".join(lines)
