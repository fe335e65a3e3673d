"""The generic optimizer step every method runs, and the checks around it.

:class:`TrainingStep` is one component holding what a step needs (the objective, the optimizer, the
schedules, the clipping norm, the device, the autocast dtype, the loss scaler); a
:class:`~dinolite.train.run.Run` builds it from the config. One call at iteration ``i``:

1. lr / weight decay from the generic schedules at ``i``; ``loss = objective(batch, i)`` under autocast;
2. stop with :class:`NonFiniteLossError` (no checkpoint written) if the loss is NaN/inf on any rank;
3. backward; ``objective.after_backward(i, optimizer)`` (e.g. DINO's prototype freeze); clip each
   student module's gradient norm, or one norm over them (``optim.clip_grad_scope``), global across shards;
   the optimizer's step (AdamW, SGD or LARS: ``optim.optimizer``) (with fp16, the loss is scaled and a
   step whose gradients overflowed is skipped: :mod:`dinolite.train.loss_scaling`);
4. stop with :class:`~dinolite.train.finite_check.NonFiniteStateError` if a weight/gradient became
   NaN/inf; ``objective.after_optimizer_step(i)`` (e.g. the EMA teacher update).

With Gram anchoring (``objective.gram``, :mod:`dinolite.train.gram`) the Gram teacher may be loaded before
1, its weighted term is added to the loss in 1, and it may be refreshed after 4.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dinolite.config import ConfigError
from dinolite.distributed import any_rank
from dinolite.fsdp.clipping import clip_grad_norm_
from dinolite.train.finite_check import check_finite_parameters
from dinolite.train.gram import GramAnchoring
from dinolite.train.loss_scaling import LossScaler
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.optim import apply_schedules
from dinolite.train.precision import autocast_context
from dinolite.train.schedules import TrainingSchedules


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the iteration and every loss term's value."""


@dataclass
class StepResult:
    """One optimizer step: the objective's output, the pre-clipping gradient norms, the schedule values."""

    output: ObjectiveOutput
    grad_norms: dict[str, float]
    values: dict[str, float]


def seed_step(seed: int, rank: int, iteration: int) -> None:
    """Seed torch (CPU and CUDA) for one step, so a resumed run draws the same random numbers."""
    torch.manual_seed((seed * 1_000_003 + rank) * 1_000_003 + iteration)


def check_finite(output: ObjectiveOutput, iteration: int, device: torch.device) -> None:
    """Raise :class:`NonFiniteLossError` on every rank when the loss is NaN/inf on any rank."""
    local_bad = not bool(torch.isfinite(output.loss.detach()).item())
    if any_rank(local_bad, device):
        values = ", ".join(f"{name}={float(v.detach()):.6g}" for name, v in output.terms.items())
        where = "on this rank" if local_bad else "on another rank"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration} ({where}): loss={float(output.loss.detach()):.6g}, {values}; "
            "stopping without writing a checkpoint (the last good one is kept). Try a lower optim.base_lr, "
            "optim.clip_grad > 0 or train.compute_precision=fp32"
        )


CLIP_SCOPES = ("per_module", "joint")


def clip_gradients(
    modules: Mapping[str, nn.Module], max_norm: float, scope: str = "per_module", unclipped: Sequence[str] = ()
) -> dict[str, float]:
    """Clip the student's gradients to ``max_norm``: each module separately (``per_module``, as DINOv2 does:
    backbone, heads), or one norm over every module together (``joint``, as MSN's release does over its
    encoder and head, SimMIM's over the model). Modules in ``unclipped`` are only measured (MSN's prototypes).

    The norm is global across FSDP shards (:func:`dinolite.fsdp.clipping.clip_grad_norm_`). Returns the
    pre-clipping norms for the log (``grad_norm/<module>``; ``grad_norm/joint`` for the joint one); ``max_norm
    <= 0`` (``optim.clip_grad=0``) disables clipping.
    """
    if scope not in CLIP_SCOPES:
        raise ValueError(f"invalid value for 'optim.clip_grad_scope': {scope!r}; expected one of {CLIP_SCOPES}")
    unknown = sorted(set(unclipped) - set(modules))
    if unknown:
        raise ConfigError(
            f"invalid value for 'optim.unclipped_modules': {unknown} name no student module; it has {sorted(modules)}"
        )
    norms: dict[str, float] = {}
    if max_norm <= 0:
        return norms
    joint: list[torch.Tensor] = []
    for name, module in modules.items():
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            continue
        if name in unclipped:
            norms[f"grad_norm/{name}"] = float(clip_grad_norm_(params, 0.0))  # max_norm 0: measured only
        elif scope == "joint":
            joint.extend(params)
        else:
            norms[f"grad_norm/{name}"] = float(clip_grad_norm_(params, max_norm))
    if joint:
        norms["grad_norm/joint"] = float(clip_grad_norm_(joint, max_norm))
    return norms


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, process max RSS on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (other values, e.g. ``skipped_samples``, as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class TrainingStep:
    """The generic step (the module docstring), as one component: call it with a batch and an iteration.

    ``clip_grad``: ``optim.clip_grad`` (``<= 0``: no clipping); ``clip_scope`` / ``unclipped``:
    ``optim.clip_grad_scope`` / ``optim.unclipped_modules`` (:func:`clip_gradients`); ``precision``: the autocast dtype
    (:func:`dinolite.train.precision.autocast_dtype`; ``None`` = fp32); ``scaler``: fp16 loss scaling
    (disabled by default). With an enabled scaler the loss is scaled for backward, the gradients
    unscaled before clipping, and a step whose gradients overflowed is skipped (its gradients dropped)
    while the scale backs off.
    """

    objective: SSLObjective
    optimizer: torch.optim.Optimizer
    schedules: TrainingSchedules
    clip_grad: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: torch.dtype | None = None
    scaler: LossScaler = field(default_factory=lambda: LossScaler(enabled=False))
    clip_scope: str = "per_module"
    unclipped: tuple[str, ...] = ()

    def __call__(self, batch: Mapping[str, Any], iteration: int) -> StepResult:
        objective, optimizer = self.objective, self.optimizer
        gram: GramAnchoring | None = getattr(objective, "gram", None)
        values = self.schedules.at(iteration)
        apply_schedules(optimizer, values["lr"], values["weight_decay"], self.schedules.peak_lr)
        optimizer.zero_grad(set_to_none=True)
        if gram is not None:
            gram.before_step(iteration, objective.teacher)
        with autocast_context(self.precision, self.device):
            output = objective(batch, iteration)
            if gram is not None:
                output = gram.anchor(output, iteration)
        check_finite(output, iteration, self.device)
        self.scaler.scale_loss(output.loss).backward()
        self.scaler.unscale_(p for module in objective.trainable_modules().values() for p in module.parameters())
        objective.after_backward(iteration, optimizer)
        grad_norms = clip_gradients(objective.trainable_modules(), self.clip_grad, self.clip_scope, self.unclipped)
        if self.scaler.update(grad_norms):  # False: an fp16 overflow, seen alike by every rank (global norms)
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)  # the overflowed gradients are dropped, not checked
        # before any checkpoint of them
        check_finite_parameters(objective.trainable_modules(), iteration, self.device)
        objective.after_optimizer_step(iteration)
        if gram is not None:  # after the EMA update: a refresh copies the updated teacher
            gram.after_optimizer_step(iteration, objective.teacher)
            values.update(gram.schedule_values(iteration))
        values.update(objective.schedule_values(iteration))
        return StepResult(output, grad_norms, values)
