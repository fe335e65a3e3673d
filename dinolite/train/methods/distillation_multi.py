"""Multi-student distillation: several students of different sizes trained on one frozen teacher's forward.

DINOv3's released code (facebookresearch/dinov3, ``MultiDistillationMetaArch``, ``multidistillation.students``)
trains each student on its own group of ranks; the teacher's forward runs once per step over the global batch
and its outputs reach every student. Here every student lives on every process and sees the process's batch;
the teacher's targets (:meth:`DINOv2Objective._teacher_targets`: frozen backbone, heads, centring) are computed
once per step and given to each student, whose loss is single-student distillation's
(:mod:`dinolite.train.methods.distillation_objective`)::

    targets = center(h_T(f_T(global crops)) / teacher_temp)           # once
    loss    = sum over students s of loss_s(targets)                   # DINO + iBOT + KoLeo of student s

The students share no parameter, so the gradient of ``loss`` with respect to student ``s`` is the gradient of
``loss_s`` alone: each student trains as it would alone against the same teacher on the same batches. Each
student has its own EMA (the network evaluated and exported, ``teacher.<name>``), its own parameter groups
(layer-wise decay by its own depth) and its own FSDP units. The checkpoint layout is single-student
distillation's with one level more: ``student.<name>.{backbone,dino_head[,ibot_head]}`` and
``teacher.<name>.*``; the centring state (``dino_loss.*``, ``ibot_loss.*``) and the teacher's SHA-256 are
the one teacher's, stored once (docs/interfaces.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dinolite.dtypes import at_least_float32
from dinolite.train.methods.dinov2_objective import DINOv2Objective
from dinolite.train.methods.distillation_objective import DistillationObjective
from dinolite.train.objective import ObjectiveOutput


class DistilledStudent(DINOv2Objective):
    """One student of a multi-student objective: DINOv2's losses on an unmasked student, with targets handed
    in (:meth:`loss_at_temperature`'s ``teacher_targets``). Not a module of the objective's tree: its
    ``student`` and ``teacher`` (EMA) dicts are, under the student's name."""

    mask_student_crops = False


class MultiStudentDistillationObjective(DistillationObjective):
    """Several students, each a ``{"backbone", "dino_head"[, "ibot_head"]}`` by name, of one frozen teacher.

    Args:
        distillation_teacher: the frozen teacher, as :class:`DistillationObjective` takes it.
        students: ``{name: {"backbone": ..., "dino_head": ..., "ibot_head": ... or None}}`` in order; the
            first student's diagnostics feed the collapse monitor and its EMA the online kNN.
        **kwargs: DINOv2's losses, weights, centring and schedules, shared by every student.
    """

    def __init__(self, distillation_teacher: nn.ModuleDict, students: dict[str, dict[str, Any]], **kwargs: Any) -> None:
        if not students:
            raise ValueError("MultiStudentDistillationObjective needs at least one student")
        first = next(iter(students.values()))
        super().__init__(distillation_teacher, **first, **kwargs)
        members = {name: DistilledStudent(**parts, **kwargs) for name, parts in students.items()}
        # object.__setattr__: the members' modules are in the tree once, through student/teacher below
        object.__setattr__(self, "members", members)
        self.student = nn.ModuleDict({name: member.student for name, member in members.items()})
        self.teacher = nn.ModuleDict({name: member.teacher for name, member in members.items()})
        self.teacher.eval()

    @property
    def student_names(self) -> list[str]:
        return list(self.members)

    def loss_at_temperature(
        self, batch: dict[str, Any], teacher_temp: float, teacher_targets: dict[str, torch.Tensor] | None = None
    ) -> ObjectiveOutput:
        """The sum of the students' distillation losses on one shared teacher forward; terms
        ``<student>/<term>``."""
        if teacher_targets is None:
            teacher_targets = self._teacher_targets(
                batch["collated_global_crops"], batch["mask_indices_list"], teacher_temp, self.ibot_weight > 0
            )
        outputs = {
            name: member.loss_at_temperature(batch, teacher_temp, teacher_targets=teacher_targets)
            for name, member in self.members.items()
        }
        terms = {f"{name}/{key}": value for name, out in outputs.items() for key, value in out.terms.items()}
        loss = torch.stack([at_least_float32(out.loss) for out in outputs.values()]).sum()
        first = outputs[self.student_names[0]]
        return ObjectiveOutput(loss=loss, terms=terms, diagnostics=first.diagnostics, patch_tokens=None)

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Each student's backbone and heads, ``<student>.<module>``: clipped one by one, as one student's are."""
        return {f"{name}.{part}": module for name, parts in self.student.items() for part, module in parts.items()}

    def evaluated_backbone(self, network: str) -> nn.Module:
        """The first student's (the online kNN follows one network; eval reads each one with ``--student``)."""
        return getattr(self, network)[self.student_names[0]]["backbone"]
