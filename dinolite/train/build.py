"""Building a :class:`~dinolite.train.run.Run` from a config and the process environment.

:func:`build_run` does, in this order (the order fixes the initial weights and is what the DINOv2
golden step pins): seed torch with ``train.seed`` (identical weights on every rank), build the method's
objective, apply the post-build transforms that leave every other run bit-identical by default
(``student.init_scale``, Gram anchoring), move it to the device, shard it (FSDP2, when several processes,
compile or activation checkpointing ask for it), the parameter groups, the optimizer (``optim.optimizer``),
the schedules, the autocast dtype and the fp16 loss scaler; with an ``output_dir``, the checkpoint manager.
Nothing is read from or written to disk but the ``output_dir`` folder itself: :meth:`Run.resume
<dinolite.train.run.Run.resume>` does the rest.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from dinolite.checkpoint import CheckpointManager
from dinolite.config import Config
from dinolite.distributed import DistributedEnv, init_distributed
from dinolite.fsdp.sharding import ShardingPlan, plan_sharding, processes_per_node, shard_objective
from dinolite.train.batches import BatchStreamFactory
from dinolite.train.gram import attach_gram_anchoring
from dinolite.train.init_scale import scale_initial_weights
from dinolite.train.loss_scaling import LossScaler
from dinolite.train.methods import get_method
from dinolite.train.objective import SSLObjective
from dinolite.train.optim import optimizer_for
from dinolite.train.precision import autocast_dtype
from dinolite.train.run import Run, RunHooks
from dinolite.train.schedules import build_schedules
from dinolite.train.step import TrainingStep


def build_run(
    cfg: Config,
    env: DistributedEnv | None = None,
    output_dir: str | Path | None = None,
    *,
    objective: SSLObjective | None = None,
    batches: BatchStreamFactory | None = None,
    hooks: RunHooks | None = None,
) -> Run:
    """Build the run ``cfg`` describes (the module docstring says what, in which order).

    Args:
        env: the distributed environment (default: :func:`init_distributed` from the config).
        output_dir: checkpoints, ``config.yaml`` and the metric log go there (``dinolite.train.loop.train``
            passes ``train.output_dir``); ``None``: a Run that writes nothing.
        objective: an already built objective (tests); default ``train.method``'s, built from ``cfg``.
        batches: opens the batch stream (tests, benchmarks, the golden step); default: ``data.source``
            through the loader, when the first batch is drawn.
        hooks: what runs around the run (:class:`~dinolite.train.run.RunHooks`).

    The checks across config sections that concern the loop and the job (the evaluation data:
    :func:`~dinolite.train.batches.validate_training_config`) are the caller's: ``train()`` makes them.
    """
    method = get_method(cfg.train.method)
    env = env or init_distributed(cfg.distributed.backend, cfg.train.device)
    device = torch.device(env.device) if env.device else torch.device("cpu")
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and env.rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    objective = objective if objective is not None else method.build_objective(cfg)
    scale_initial_weights(objective, cfg.student.init_scale, cfg.student.init_scale_modules)
    attach_gram_anchoring(
        objective, cfg, method.name, offers_gram=any(s.name == "gram" for s in method.config_sections)
    )
    _move(objective, device)
    precision = autocast_dtype(cfg.train.compute_precision, device)
    sharding = _shard(objective, cfg, precision, env.world_size, device)
    objective.train()
    optimizer = optimizer_for(objective.student, cfg.optim)
    global_batch = cfg.train.batch_size_per_gpu * env.world_size
    schedules = build_schedules(cfg.optim, cfg.train.iterations_per_epoch, global_batch)
    scaler = LossScaler(enabled=precision == torch.float16 and cfg.train.grad_scaler)
    step = TrainingStep(
        objective,
        optimizer,
        schedules,
        cfg.optim.clip_grad,
        device,
        precision,
        scaler,
        clip_scope=cfg.optim.clip_grad_scope,
        unclipped=tuple(cfg.optim.unclipped_modules),
    )
    # The method record (evaluated network, head names) lets eval/export read the run without the registry.
    checkpoints = (
        CheckpointManager(out, keep_last=cfg.train.keep_last_checkpoints, config=cfg, method=method.record(cfg))
        if out is not None
        else None
    )
    return Run(
        cfg=cfg,
        env=env,
        method=method,
        training_step=step,
        output_dir=out,
        checkpoints=checkpoints,
        sharding=sharding,
        batches=batches,
        hooks=hooks or RunHooks(),
    )


def _move(objective: SSLObjective, device: torch.device) -> None:
    """``objective.to(device)``, skipped when every tensor already sits there: the objective ``dinolite-plan``
    builds under fake tensors is on its device already, and ``Module.to`` would try to swap each fake
    parameter with itself (which torch refuses)."""
    tensors = itertools.chain(objective.parameters(), objective.buffers())
    if any(t.device != device for t in tensors):
        objective.to(device)


def _shard(
    objective: SSLObjective, cfg: Config, precision: torch.dtype | None, world_size: int, device: torch.device
) -> ShardingPlan | None:
    """FSDP2 (and compile / activation checkpointing of the blocks) when the config or the world size asks
    for it: :func:`dinolite.fsdp.sharding.shard_objective`. Returns the plan it followed (``None``: unsharded)."""
    dist = cfg.distributed
    if not (world_size > 1 or dist.compile or dist.activation_checkpointing):
        return None
    options = dict(
        strategy=dist.sharding_strategy,
        mixed_precision=precision,
        activation_checkpointing=dist.activation_checkpointing,
        compile=dist.compile,
    )
    shard_objective(objective, **options)
    return plan_sharding(
        **options, device_type=device.type, world_size=world_size, processes_per_node=processes_per_node(world_size)
    )
