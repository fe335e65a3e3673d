"""The contract between a self-supervised objective and the training loop.

The loop knows a generic step only (:class:`dinolite.train.step.TrainingStep`)::

    output = objective(batch, iteration)          # loss, logged terms, monitor diagnostics
    output.loss.backward()
    objective.after_backward(iteration, optimizer) # e.g. DINO's prototype freeze
    clip each of objective.trainable_modules(); optimizer.step()
    objective.after_optimizer_step(iteration)      # e.g. the EMA teacher update

Everything method-specific (teacher momentum and temperature, prototype freeze, centering) lives in the
objective, whose schedules are pure functions of ``iteration`` so that a resume needs only the
iteration. A method is registered with its objective, views, collate and the rest in
:mod:`dinolite.train.methods` (docs/methods.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class PatchTokens:
    """The student's patch features that Gram anchoring (:mod:`dinolite.train.gram`) compares, and what it
    needs to compute the Gram teacher's: ``student`` (N, P, D) final-norm patch tokens of the crops it
    saw (with their masks applied, gradient attached); ``images`` (N, C, H, W) those crops, unmasked;
    ``patch_size``; ``masks`` (N, P) bool, the masked patches (or None); ``teacher`` (N, P, D) the EMA
    teacher's patch tokens of the same crops (or None); ``teacher_images``: the Gram teacher's own crops of
    the same views (larger; None: ``images``)."""

    student: torch.Tensor
    images: torch.Tensor
    patch_size: int
    masks: torch.Tensor | None = None
    teacher: torch.Tensor | None = None
    teacher_images: torch.Tensor | None = None


@dataclass
class ObjectiveOutput:
    """What one forward pass of an objective returns.

    ``loss`` is the scalar that is back-propagated; ``terms`` holds each weighted term that sums to it
    (for logging and for the NaN check, which names them); ``diagnostics`` holds detached, local-rank
    tensors for the collapse monitor (the keys the method's ``MethodSpec.monitor_embeddings`` names,
    plus ``teacher_head_probs`` / ``student_head_logits`` for methods with prototype heads);
    ``patch_tokens``: what Gram anchoring reads, from a method that offers it (:class:`PatchTokens`).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    patch_tokens: PatchTokens | None = None


class SSLObjective(nn.Module, abc.ABC):
    """A self-supervised objective: a student that is trained and an optional teacher/target network.

    Subclasses set ``self.student`` (an ``nn.ModuleDict`` that has a ``"backbone"``) and ``self.teacher``
    (an ``nn.ModuleDict``, empty when the method has no teacher network). The teacher may hold a subset
    of the student's modules (no predictor): :func:`dinolite.train.ema.ema_update` matches by name.
    """

    student: nn.ModuleDict
    teacher: nn.ModuleDict

    @abc.abstractmethod
    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        """Compute the loss on one collated batch at training iteration ``iteration`` (0-based)."""

    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``loss.backward()``, before gradient clipping and the optimizer step.

        May edit gradients and the optimizer's per-group ``lr`` (the loop has just set every group's lr
        and weight decay from the generic schedules). Default: nothing.
        """

    def after_optimizer_step(self, iteration: int) -> None:
        """Called after the optimizer step (e.g. move an EMA teacher). Default: nothing."""

    def schedule_values(self, iteration: int) -> dict[str, float]:
        """The method's own schedule values at ``iteration``, for the metric log (e.g. teacher_temp)."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Non-parameter state that a resume must restore (e.g. DINO's centering buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state but got keys {sorted(state)}")

    def evaluated_backbone(self, network: str) -> nn.Module:
        """The backbone of ``network`` (``"teacher"``/``"student"``) that the online kNN evaluates."""
        return getattr(self, network)["backbone"]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The student modules the optimizer trains, by name (gradient clipping is per module)."""
        return dict(self.student.items())
