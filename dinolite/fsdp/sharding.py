"""FSDP2 sharding of an SSL objective, activation checkpointing, per-block compilation.

``shard_objective`` applies, to the student and to the teacher alike:

1. activation checkpointing of every transformer block (student only: the teacher runs without grad),
   through ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` around the block's own forward, so
   that state-dict keys stay DINOv2's (``blocks.N.*``, no wrapper prefix);
2. ``torch.compile`` of every block with ``nn.Module.compile`` (in place, keys unchanged): Inductor with
   triton on CUDA, with its C++ backend on CPU (it needs a C++ compiler on PATH); without them it is
   skipped with a warning;
3. ``fully_shard`` on every block, then on each backbone (the root of its blocks), and on each head.
   A head shared by DINO and iBOT (``ibot.separate_head: false``) is one module object and is sharded once.

Student and teacher are sharded with the same mesh and the same plan, so the local shard of a teacher
parameter covers exactly the same elements as the student parameter of the same name: the EMA update can
run on local shards without communication (``check_aligned_shards`` verifies this).

Strategies (``distributed.sharding_strategy``):

* ``full_shard``: ``reshard_after_forward=True`` (ZeRO-3: parameters gathered for forward, freed, gathered
  again for backward).
* ``shard_grad_op``: ``reshard_after_forward=False`` for the student (ZeRO-2: parameters stay gathered
  between forward and backward; more memory, one all-gather fewer). The teacher, which has no backward,
  reshards after every forward whatever the strategy, so that its EMA update sees its local shards.
* ``hybrid_shard`` (HSDP): FSDP2 over a 2-D mesh ``(replicate=nodes, shard=processes per node)``:
  parameters are sharded within a node (``full_shard`` there: resharded after forward) and replicated
  across nodes; gradients are reduce-scattered within
  the node, then all-reduced across nodes, so the slow inter-node links carry one all-reduce per step.
* ``no_shard``: with one process, plain modules. With several, FSDP2 over a 2-D mesh
  ``(replicate=world, shard=1)``: every rank holds full parameters and gradients are all-reduced, which is
  what DDP does, but through the same code path as the sharded strategies (same hooks for the backbone's
  extra forward methods, same DTensor state dicts for checkpoints, same mixed-precision policy). DDP itself
  would only synchronise gradients of calls that go through its ``forward``, and the objective calls
  ``forward_features_list`` on the backbone directly.

With one process and no process group, no FSDP is applied (there is nothing to shard); mixed precision is
then the trainer's autocast. Clipping by the global gradient norm over the shards:
:func:`dinolite.fsdp.clipping.clip_grad_norm_`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

try:  # torch >= 2.6 exports FSDP2 here
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - torch 2.6 kept FSDP2 under the composable namespace
    from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # type: ignore

try:
    from torch.distributed.fsdp import register_fsdp_forward_method
except ImportError:  # pragma: no cover - torch 2.6
    from torch.distributed._composable.fsdp import register_fsdp_forward_method  # type: ignore

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

try:  # private, but present since torch 2.1; without it nothing runs under fake tensors anyway
    from torch._subclasses.fake_tensor import unset_fake_temporarily as _real_tensors
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as _real_tensors  # type: ignore[assignment]

from dinolite.distributed import get_world_size

log = logging.getLogger(__name__)

STRATEGIES = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard")
# Backbone methods the objective, the monitor and eval call instead of ``forward``; FSDP must unshard the
# root parameters (patch embedding, tokens, final norm) around them too.
BACKBONE_FORWARD_METHODS = (
    "forward_features",
    "forward_features_list",
    "get_intermediate_layers",
    "get_last_selfattention",
)


@dataclass(frozen=True)
class ShardingPlan:
    """What ``shard_objective`` will do, decided from the request and the machine (see ``plan_sharding``)."""

    strategy: str
    use_fsdp: bool
    # (world,) for full_shard / shard_grad_op, (world, 1) for no_shard, (nodes, processes per node) for
    # hybrid_shard, () without FSDP
    mesh_shape: tuple[int, ...]
    reshard_after_forward: bool
    mixed_precision: bool  # low-precision params / fp32 reduction applied through FSDP's policy
    activation_checkpointing: bool
    compile: bool
    notes: tuple[str, ...]  # why a request was not honoured (logged as warnings)
    param_dtype: torch.dtype = torch.bfloat16  # FSDP's compute copy of the parameters (fp16 for fp16 training)


CPU_COMPILERS = ("g++", "c++", "clang++")  # what Inductor's C++ backend can build its CPU kernels with


def find_cpu_compiler() -> str | None:
    """The path of the first C++ compiler of ``CPU_COMPILERS`` on PATH (Inductor's CPU kernels need one)."""
    return next((path for path in map(shutil.which, CPU_COMPILERS) if path), None)


def _compile_unavailable_reason(device_type: str) -> str | None:
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile; running eager"
    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile needs triton on CUDA and it is not installed; running eager"
    if device_type == "cpu" and find_cpu_compiler() is None:
        return (
            f"torch.compile on CPU needs a C++ compiler ({', '.join(CPU_COMPILERS)}) and none is on PATH; running eager"
        )
    if device_type not in ("cpu", "cuda"):
        return f"torch.compile is only used on CPU and CUDA; running eager on {device_type}"
    return None


def plan_sharding(
    strategy: str,
    mixed_precision: bool | torch.dtype,
    activation_checkpointing: bool,
    compile: bool,
    device_type: str,
    world_size: int,
    processes_per_node: int | None = None,
) -> ShardingPlan:
    """Decide how to shard. Pure: the same arguments always give the same plan.

    ``processes_per_node`` is the size of ``hybrid_shard``'s shard groups (default: ``world_size``, one node).

    Fallbacks (each recorded in ``notes``): no FSDP with one process (the trainer's autocast is then the
    only mixed precision); compile only with triton on CUDA and a C++ compiler on CPU. The low-precision
    policy applies on every device FSDP runs on, gloo on CPU included, so the GPU path is the one the CPU
    tests exercise; it is only asked for when ``train.compute_precision`` is bf16 or fp16 (``auto`` is fp32
    on CPU).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed.sharding_strategy={strategy!r}; expected one of {', '.join(STRATEGIES)}")
    notes: list[str] = []
    use_fsdp = world_size > 1
    if not use_fsdp:
        mesh_shape: tuple[int, ...] = ()
    elif strategy == "no_shard":
        mesh_shape = (world_size, 1)
    elif strategy == "hybrid_shard":
        mesh_shape = _hybrid_mesh_shape(world_size, processes_per_node or world_size)
    else:
        mesh_shape = (world_size,)
    # True means bf16 (the historical flag); a dtype names the compute dtype (fp16 training passes float16)
    param_dtype = mixed_precision if isinstance(mixed_precision, torch.dtype) else torch.bfloat16
    use_mp = bool(mixed_precision) and use_fsdp
    if mixed_precision and not use_mp:
        notes.append(
            f"FSDP mixed precision ({str(param_dtype).removeprefix('torch.')} params, fp32 reduce) not applied: "
            "one process (no FSDP)"
        )
    compile_reason = _compile_unavailable_reason(device_type) if compile else None
    if compile_reason:
        notes.append(compile_reason)
    return ShardingPlan(
        strategy=strategy,
        use_fsdp=use_fsdp,
        mesh_shape=mesh_shape,
        reshard_after_forward=strategy in ("full_shard", "hybrid_shard"),  # ZeRO-3 within the node
        mixed_precision=use_mp,
        activation_checkpointing=activation_checkpointing,
        compile=compile and compile_reason is None,
        notes=tuple(notes),
        param_dtype=param_dtype,
    )


def _hybrid_mesh_shape(world_size: int, processes_per_node: int) -> tuple[int, int]:
    if processes_per_node < 1 or world_size % processes_per_node:
        raise ValueError(
            f"distributed.sharding_strategy=hybrid_shard: {world_size} processes do not split into nodes of "
            f"{processes_per_node} (LOCAL_WORLD_SIZE / SLURM_NTASKS_PER_NODE); every node must run as many"
        )
    return (world_size // processes_per_node, processes_per_node)


def processes_per_node(world_size: int, environ: Mapping[str, str] | None = None) -> int:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else Slurm's ``SLURM_NTASKS_PER_NODE`` when
    it is one number (``4``, not ``4(x2)``), else ``world_size`` (all on one node)."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = env.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return world_size


def enable_activation_checkpointing(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward instead of storing them.

    The block keeps its class and its parameter names; only its ``forward`` is routed through
    ``torch.utils.checkpoint.checkpoint`` (non-reentrant: works with FSDP2's hooks and kwargs).
    """
    inner = block.forward

    @functools.wraps(inner)
    def checkpointed_forward(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed_forward  # instance attribute: nn.Module.__call__ dispatches to it


def _blocks_of(backbone: nn.Module) -> list[nn.Module]:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(backbone).__name__} has no `blocks` nn.ModuleList; cannot shard it per block")
    return list(blocks)


def _build_mesh(plan: ShardingPlan, device_type: str) -> DeviceMesh:
    names = ("replicate", "shard") if len(plan.mesh_shape) == 2 else ("shard",)
    # The mesh is a table of ranks, real even when the model is built under fake tensors (dinolite-plan):
    # building it needs real values (nonzero), which fake tensors do not have.
    with _real_tensors():
        return init_device_mesh(device_type, plan.mesh_shape, mesh_dim_names=names)


def _shard_module_dict(modules: nn.ModuleDict, plan: ShardingPlan, mesh: DeviceMesh, train: bool) -> None:
    # The teacher has no backward that could reuse gathered parameters, and its EMA update must find the
    # sharded parameters registered: it always reshards after forward (explicit True also covers its
    # roots, which FSDP would otherwise leave gathered).
    reshard = plan.reshard_after_forward if train else True
    fsdp_kwargs: dict = {"mesh": mesh, "reshard_after_forward": reshard}
    if plan.mixed_precision:
        fsdp_kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=plan.param_dtype, reduce_dtype=torch.float32)
    for name, module in _unique_named(modules):
        if is_student_set_member(module):  # multi-student distillation: each student its own FSDP units
            _shard_module_dict(module, plan, mesh, train)
            continue
        is_backbone = name == "backbone"
        if is_backbone:
            for block in _blocks_of(module):
                if train and plan.activation_checkpointing:
                    enable_activation_checkpointing(block)
                if plan.compile:
                    block.compile()
        if not plan.use_fsdp:
            continue
        if is_backbone:
            for block in _blocks_of(module):
                fully_shard(block, **fsdp_kwargs)
        fully_shard(module, **fsdp_kwargs)
        if is_backbone:
            for method in BACKBONE_FORWARD_METHODS:
                if callable(getattr(module, method, None)):
                    register_fsdp_forward_method(module, method)


def is_student_set_member(module: nn.Module) -> bool:
    """Whether ``module`` is one student of a set of students (``nn.ModuleDict`` with its own ``backbone``):
    multi-student distillation's ``objective.student`` maps names to such dicts
    (:mod:`dinolite.train.methods.distillation_multi`)."""
    return isinstance(module, nn.ModuleDict) and "backbone" in module


def is_student_set(modules: nn.Module) -> bool:
    """Whether ``modules`` holds several students by name rather than one student's backbone and heads."""
    return (
        isinstance(modules, nn.ModuleDict)
        and "backbone" not in modules
        and len(modules) > 0
        and all(is_student_set_member(m) for m in modules.values())
    )


def _unique_named(modules: nn.ModuleDict) -> list[tuple[str, nn.Module]]:
    seen: set[int] = set()
    named = []
    for name, module in modules.items():
        if id(module) not in seen:
            seen.add(id(module))
            named.append((name, module))
    return named


def shard_objective(
    objective: nn.Module,
    strategy: str = "full_shard",
    mixed_precision: bool | torch.dtype = False,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Shard ``objective.student`` and ``objective.teacher`` (and a Gram teacher, ``objective.gram.teacher``)
    in place (see the module doc); returns it.

    ``objective`` must already sit on its device (CPU, or the local rank's GPU). The world size comes
    from the default process group (one process when there is none).
    """
    params = list(objective.parameters())
    device_type = params[0].device.type if params else "cpu"
    world_size = get_world_size()
    plan = plan_sharding(
        strategy,
        mixed_precision,
        activation_checkpointing,
        compile,
        device_type,
        world_size,
        processes_per_node(world_size),
    )
    for note in plan.notes:
        warnings.warn(note, stacklevel=2)
    mesh = _build_mesh(plan, device_type) if plan.use_fsdp else None
    student = objective.student
    teacher = getattr(objective, "teacher", None)
    _shard_module_dict(student, plan, mesh, train=True)
    if teacher is not None and len(teacher) > 0:
        _shard_module_dict(teacher, plan, mesh, train=False)
        check_aligned_shards(student, teacher)
    gram = getattr(objective, "gram", None)
    if gram is not None and len(gram.teacher) > 0:  # Gram anchoring's frozen copy of the teacher, sharded alike
        _shard_module_dict(gram.teacher, plan, mesh, train=False)
        check_aligned_shards(teacher, gram.teacher)
    log.info("sharding plan: %s", plan)
    return objective


def is_sharded(module: nn.Module) -> bool:
    """True when ``fully_shard`` was applied to ``module``."""
    return isinstance(module, FSDPModule)


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP2's parameters and gradients); any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def check_aligned_shards(student: nn.Module, teacher: nn.Module) -> None:
    """Raise when a teacher parameter's local shard does not cover the same elements as the student's.

    The EMA update ``t <- m t + (1 - m) s`` runs on local shards; this is only right when both are split
    identically (same global shape, same placements, same local shape).
    """
    student_params = dict(student.named_parameters())
    for name, t_param in teacher.named_parameters():
        s_param = student_params.get(name)
        if s_param is None:
            continue
        s_place = getattr(s_param, "placements", None)
        t_place = getattr(t_param, "placements", None)
        if (
            s_param.shape != t_param.shape
            or s_place != t_place
            or local_shard(s_param).shape != local_shard(t_param).shape
        ):
            raise RuntimeError(
                f"student and teacher parameter {name!r} are sharded differently "
                f"(shapes {tuple(s_param.shape)} vs {tuple(t_param.shape)}, placements {s_place} vs {t_place}); "
                "the EMA update on local shards would mix unrelated elements"
            )
