"""The exponential moving average of a student into its teacher/target network, for every method.

``theta_T <- m * theta_T + (1 - m) * theta_S`` (Tarvainen & Valpola 2017, "Mean teachers"; the momentum
encoder of MoCo, BYOL's target network and DINO's teacher are this update). The momentum ``m`` follows
the shared ``ema`` config section (:func:`momentum_schedule`).
"""

from __future__ import annotations

import torch
from torch import nn

from dinolite.config import Config, EMAConfig
from dinolite.fsdp.sharding import local_shard
from dinolite.train.schedules import CosineSchedule, LinearSchedule, Schedule, constant_after_warmup, stretched_iters


def momentum_schedule(ema: EMAConfig, total_iters: int) -> Schedule:
    """The EMA momentum over a run of ``total_iters`` iterations: ``ema.schedule`` from ``ema.momentum`` to
    ``ema.final_momentum`` (``cosine``: DINO's and BYOL's half-cosine; ``linear``: I-JEPA's ramp), laid out
    over ``ema.schedule_horizon`` x the run (MSN's release: linear over 1.25 x the run; a cosine's length is
    rounded to whole iterations), or ``ema.momentum`` throughout (``constant``: DINOv3's recipes;
    ``final_momentum`` and the horizon unused)."""
    if ema.schedule == "constant":
        return constant_after_warmup(ema.momentum, 0, total_iters)
    length = stretched_iters(total_iters, ema.schedule_horizon)
    if ema.schedule == "linear":
        return LinearSchedule(ema.momentum, ema.final_momentum, length)
    if ema.schedule == "cosine":
        return CosineSchedule(ema.momentum, ema.final_momentum, round(length))
    raise ValueError(f"invalid value for 'ema.schedule': {ema.schedule!r}; expected one of cosine, linear, constant")


def run_momentum_schedule(cfg: Config) -> Schedule:
    """:func:`momentum_schedule` over the whole run (``optim.epochs`` x ``train.iterations_per_epoch``)."""
    return momentum_schedule(cfg.ema, cfg.optim.epochs * cfg.train.iterations_per_epoch)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Move every parameter the teacher has towards the student parameter of the same name.

    Parameters are matched by name, so the student may hold modules the teacher lacks (a predictor,
    a projector only the online branch has); those are ignored, and so are parameters the student does
    not train (``requires_grad=False``: their value is the teacher's already). A teacher parameter without a student
    counterpart, or with another shape, is an error. The update runs on local tensors: with FSDP2,
    student and teacher are sharded alike (``sharding.check_aligned_shards``), so each rank updates its
    own shards without communication.
    """
    student_params = dict(student.named_parameters())
    teacher_locals, student_locals = [], []
    for name, t_param in teacher.named_parameters():
        s_param = student_params.get(name)
        if s_param is None:
            raise KeyError(f"EMA update: the teacher has parameter {name!r} but the student does not")
        t_local, s_local = local_shard(t_param.detach()), local_shard(s_param.detach())
        if t_local.shape != s_local.shape:
            raise RuntimeError(
                f"EMA update: {name!r} has local shape {tuple(t_local.shape)} in the teacher and "
                f"{tuple(s_local.shape)} in the student"
            )
        if not s_param.requires_grad:
            # A frozen student parameter (a fixed sine-cosine position table) is the teacher's value
            # already; averaging it with itself would only add floating-point drift.
            continue
        teacher_locals.append(t_local)
        student_locals.append(s_local)
    if not teacher_locals:
        return
    torch._foreach_mul_(teacher_locals, momentum)
    torch._foreach_add_(teacher_locals, student_locals, alpha=1.0 - momentum)
