"""The contract between a self-supervised objective and the training loop.

The loop only knows :class:`SSLObjective`: it optimises ``objective.student``'s parameters, calls
``forward(batch, teacher_temp)`` for the loss, then ``update_teacher(momentum)`` after the optimizer step.
DINOv2 (:mod:`dinolite.train.dinov2`) is one implementation; SimCLR, Barlow Twins, SimSiam or I-JEPA
can be siblings (an empty ``teacher`` and a no-op ``update_teacher`` for the ones without an EMA
network) without any change to the loop.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ObjectiveOutput:
    """What one forward pass of an objective returns.

    ``loss`` is the scalar that is back-propagated; ``terms`` holds each weighted term that sums to it
    (for logging and for the NaN check, which names them); ``diagnostics`` holds detached, local-rank
    tensors for the collapse monitor (see docs/interfaces.md for the keys a DINO-style objective fills).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class SSLObjective(nn.Module, abc.ABC):
    """A self-supervised objective: a student that is trained and an optional EMA teacher.

    Subclasses set ``self.student`` (an ``nn.ModuleDict`` that has a ``"backbone"``) and ``self.teacher``
    (an ``nn.ModuleDict``, empty when the method has no teacher network).
    """

    student: nn.ModuleDict
    teacher: nn.ModuleDict

    @abc.abstractmethod
    def forward(self, batch: dict[str, Any], teacher_temp: float) -> ObjectiveOutput:
        """Compute the loss on one collated batch (gradients flow into ``student`` only)."""

    def update_teacher(self, momentum: float) -> None:
        """Move the teacher towards the student after an optimizer step (no-op without a teacher)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Non-parameter state that a resume must restore (e.g. DINO's centering buffers)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state but got keys {sorted(state)}")

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The student modules the optimizer trains, by name (gradient clipping is per module)."""
        return dict(self.student.items())
