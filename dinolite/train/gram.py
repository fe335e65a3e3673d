"""Gram anchoring (Siméoni et al. 2025, DINOv3, Sec. 4): a frozen Gram teacher and the term it adds.

The term is ``w(it) * GramLoss(student patches, Gram teacher patches)`` (:mod:`dinolite.losses.gram_loss`):
the student's final-norm patch features of the global crops (as the method's forward computed them, with
iBOT's masks, before any head) against those of the *Gram teacher* on the same crops, unmasked.

The Gram teacher is a frozen copy of the EMA teacher's backbone (DINOv3's ``train/train.py`` and
``SSLMetaArch``; the ``gram`` config keys are DINOv3's, :mod:`dinolite.train.gram_config`):

- before iteration ``it_load_ema_teacher`` runs, the EMA teacher is copied into it (the term is 0 before);
- with ``rep_update``, after iteration ``it`` (its EMA update done) it is refreshed from the EMA teacher
  when ``(it + 1) % update_frequency == 0`` and ``it + 1 >= it_first_update``, at most ``max_updates``
  times (DINOv3's defaults: every 50,000 iterations from 0, unlimited; its ViT-7B Gram-anchoring recipe:
  every 10,000 from 1,010,000, 3 times);
- with ``ema_teacher`` there is no copy: the EMA teacher's own patch features of this step are the target.

Its weights and two counters (loaded, refreshes done) are buffers and parameters of this module, so a
checkpoint of the objective holds them and a resume restores them bit for bit. With FSDP2 it is sharded
like the EMA teacher (:func:`dinolite.fsdp.sharding.shard_objective`), so a copy is local to each shard.
When the Gram teacher's crops are larger than the student's (a batch's ``collated_gram_teacher_crops``),
its patch grid is resized to the student's (:func:`resize_patch_grid`).

The generic step (:class:`dinolite.train.step.TrainingStep`) calls :meth:`GramAnchoring.before_step`,
:meth:`GramAnchoring.anchor` and :meth:`GramAnchoring.after_optimizer_step`; a method offers Gram anchoring
by filling ``ObjectiveOutput.patch_tokens`` and naming the ``gram`` section in its registry entry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dinolite.config import Config, ConfigError
from dinolite.fsdp.sharding import local_shard
from dinolite.losses.gram_loss import GramLoss
from dinolite.train.gram_config import GramConfig
from dinolite.train.objective import ObjectiveOutput, PatchTokens, SSLObjective
from dinolite.train.schedules import Schedule, WarmupCosineSchedule, constant_after_warmup


@dataclass(frozen=True)
class GramRefreshPlan:
    """When the Gram teacher is loaded and refreshed, as pure functions of the iteration (DINOv3's rule)."""

    load_at: int  # gram.it_load_ema_teacher (-1: never: gram.ema_teacher)
    rep_update: bool
    update_frequency: int
    it_first_update: int
    max_updates: Optional[int]

    @classmethod
    def from_config(cls, gram: GramConfig) -> GramRefreshPlan:
        return cls(
            gram.it_load_ema_teacher, gram.rep_update, gram.update_frequency, gram.it_first_update, gram.max_updates
        )

    def loads_before(self, iteration: int) -> bool:
        """The EMA teacher is copied in before ``iteration`` runs."""
        return iteration == self.load_at

    def due_after(self, iteration: int) -> bool:
        """Iteration ``iteration`` ends on a refresh date (whether ``max_updates`` allows it or not)."""
        step = iteration + 1
        return self.rep_update and step >= self.it_first_update and step % self.update_frequency == 0

    def refreshes_after(self, iteration: int, done: int) -> bool:
        """A refresh follows iteration ``iteration``, ``done`` refreshes having been made."""
        return self.due_after(iteration) and (self.max_updates is None or done < self.max_updates)

    def refreshes_before(self, iteration: int) -> int:
        """How many refreshes a run has made before ``iteration`` (what a resume there finds)."""
        if not self.rep_update:
            return 0
        first = max(self.it_first_update, 1)
        first_step = -(-first // self.update_frequency) * self.update_frequency  # first multiple >= first
        count = 0 if iteration < first_step else (iteration - first_step) // self.update_frequency + 1
        return count if self.max_updates is None else min(count, self.max_updates)


def resize_patch_grid(
    patches: torch.Tensor, size: tuple[int, int], method: str = "bicubic", antialias: bool = False
) -> torch.Tensor:
    """Resize (N, h*w, D) patch features on a square h x h grid to ``size`` = (H', W'): (N, H'*W', D).

    DINOv3 feeds the Gram teacher larger crops and interpolates its patch features (as a D-channel image,
    ``align_corners=False``) to the student's grid; ``method`` / ``antialias`` are
    ``gram.global_teacher_resize_method`` / ``_antialias``."""
    n, tokens, dim = patches.shape
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"resize_patch_grid: {tokens} patches are not a square grid")
    grid = patches.transpose(1, 2).reshape(n, dim, side, side)
    corners = {} if method in ("nearest", "nearest-exact", "area") else {"align_corners": False}
    out = F.interpolate(grid, size=size, mode=method, antialias=antialias, **corners)
    return out.flatten(2).transpose(1, 2)


@torch.no_grad()
def copy_backbone(target: nn.Module, source: nn.Module) -> None:
    """``target``'s parameters and buffers := ``source``'s of the same name (local shards; no communication)."""
    sources = dict(source.named_parameters()) | dict(source.named_buffers())
    for name, tensor in list(target.named_parameters()) + list(target.named_buffers()):
        if name not in sources:
            raise KeyError(f"Gram teacher: the EMA teacher has no {name!r}")
        local_shard(tensor).copy_(local_shard(sources[name].detach()))


class GramAnchoring(nn.Module):
    """The Gram teacher, the loss, its weight schedule and the refresh plan (see the module docstring).

    Args:
        backbone: the EMA teacher's backbone; a frozen copy of it becomes the Gram teacher (none with
            ``gram.ema_teacher``).
        gram: the ``gram`` config section.
        iterations_per_epoch, total_iterations: lay the weight schedule out over the run.
    """

    def __init__(self, backbone: nn.Module, gram: GramConfig, iterations_per_epoch: int, total_iterations: int) -> None:
        super().__init__()
        self.config = gram
        self.plan = GramRefreshPlan.from_config(gram)
        self.loss = GramLoss(gram.normalized, gram.img_level, gram.remove_neg, gram.remove_only_teacher_neg)
        self.weight = gram_weight_schedule(gram, iterations_per_epoch, total_iterations)
        self.teacher = nn.ModuleDict()
        if not gram.ema_teacher:
            self.teacher["backbone"] = copy.deepcopy(backbone)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.register_buffer("loaded", torch.tensor(bool(gram.ema_teacher)))
        self.register_buffer("refreshes", torch.tensor(0, dtype=torch.int64))

    def train(self, mode: bool = True) -> GramAnchoring:
        super().train(mode)
        self.teacher.eval()  # frozen, and no stochastic depth, in training too
        return self

    # ------------------------------------------------------------------ the step's hooks
    def before_step(self, iteration: int, ema_teacher: nn.ModuleDict) -> None:
        """Copy the EMA teacher in before ``gram.it_load_ema_teacher`` runs."""
        if self.plan.loads_before(iteration) and "backbone" in self.teacher:
            copy_backbone(self.teacher["backbone"], ema_teacher["backbone"])
            self.loaded.fill_(True)

    def after_optimizer_step(self, iteration: int, ema_teacher: nn.ModuleDict) -> None:
        """Refresh from the EMA teacher (after its update) when the plan says so."""
        # due_after first: reading the count (a device sync on GPU) only on refresh dates
        due = "backbone" in self.teacher and self.plan.due_after(iteration)
        if due and self.plan.refreshes_after(iteration, int(self.refreshes)):
            copy_backbone(self.teacher["backbone"], ema_teacher["backbone"])
            self.loaded.fill_(True)
            self.refreshes.add_(1)

    def schedule_values(self, iteration: int) -> dict[str, float]:
        return {"gram_loss_weight": self.weight(iteration), "gram_refreshes": float(self.refreshes)}

    def anchor(self, output: ObjectiveOutput, iteration: int) -> ObjectiveOutput:
        """``output`` with the weighted Gram term added to its loss and terms (``gram_loss``)."""
        tokens = output.patch_tokens
        if tokens is None:
            raise RuntimeError("Gram anchoring: the objective's output holds no patch_tokens")
        if bool(self.loaded):
            term = self.weight(iteration) * self.loss(*self._pairs(tokens))
        else:  # before gram.it_load_ema_teacher: no Gram teacher yet (DINOv3 would stop here)
            term = tokens.student.new_zeros((), dtype=torch.float32)
        terms = dict(output.terms, gram_loss=term)
        return replace(output, loss=output.loss + term.to(output.loss.dtype), terms=terms)

    def _pairs(self, tokens: PatchTokens) -> tuple[torch.Tensor, torch.Tensor]:
        student = tokens.student
        target = self.target(tokens, student.shape[1])
        if self.config.tokens_used == "masked":
            return student[tokens.masks], target[tokens.masks]
        if self.config.tokens_used == "unmasked":
            return student[~tokens.masks], target[~tokens.masks]
        return student, target

    @torch.no_grad()
    def target(self, tokens: PatchTokens, n_student: int) -> torch.Tensor:
        """The Gram teacher's patch features on the student's grid."""
        if self.config.ema_teacher:
            if tokens.teacher is None:
                raise RuntimeError("gram.ema_teacher=true but the objective's output holds no teacher patch tokens")
            return tokens.teacher.detach()
        images = tokens.teacher_images if tokens.teacher_images is not None else tokens.images
        patches = self.teacher["backbone"].forward_features(images)["x_norm_patchtokens"]
        if patches.shape[1] != n_student:
            side = tokens.images.shape[-2] // tokens.patch_size, tokens.images.shape[-1] // tokens.patch_size
            patches = resize_patch_grid(
                patches, side, self.config.global_teacher_resize_method, self.config.global_teacher_resize_antialias
            )
        return patches


def gram_weight_schedule(gram: GramConfig, iterations_per_epoch: int, total_iterations: int) -> Schedule:
    """``gram.loss_weight`` throughout, or ``gram.loss_weight_schedule`` laid out in epochs of the run."""
    s = gram.loss_weight_schedule
    if s is None:
        return constant_after_warmup(gram.loss_weight, 0, total_iterations)
    cosine = None if s.cosine_epochs is None else s.cosine_epochs * iterations_per_epoch
    return WarmupCosineSchedule(
        s.start, s.peak, s.end, s.warmup_epochs * iterations_per_epoch, total_iterations, cosine
    )


def attach_gram_anchoring(objective: SSLObjective, cfg: Config, method: str, offers_gram: bool) -> None:
    """Give ``objective`` its :class:`GramAnchoring` when ``gram.use_loss`` (before it is moved and sharded).

    Refused (:class:`ConfigError`) for a method that does not offer the ``gram`` section (it does not train
    patch tokens) or has no EMA teacher backbone to copy."""
    gram = getattr(cfg, "gram", None)
    if gram is None or not gram.use_loss or getattr(objective, "gram", None) is not None:
        return
    if not offers_gram:
        raise ConfigError(
            f"gram.use_loss=true: train.method={method!r} does not train patch tokens (its objective gives no "
            "patch features to anchor); Gram anchoring needs a method whose registry entry offers the gram "
            "section, e.g. dinov2"
        )
    if "backbone" not in objective.teacher:
        raise ConfigError(
            f"gram.use_loss=true: train.method={method!r} has no EMA teacher backbone to copy into the Gram teacher"
        )
    total = cfg.optim.epochs * cfg.train.iterations_per_epoch
    objective.gram = GramAnchoring(objective.teacher["backbone"], gram, cfg.train.iterations_per_epoch, total)
