"""Distillation as a registered method (``train.method: distillation``): DINOv2's distillation of a large
frozen teacher into a smaller student (Oquab et al. 2023, Sec. 5), with DINOv3's released code for it.

The objective is :mod:`dinolite.train.methods.distillation_objective`; the teacher is read by
:mod:`dinolite.train.methods.distillation_teacher`. The method reads DINOv2's sections (``dino``,
``ibot``, ``teacher``: the student's heads and losses, the teacher temperature and centring) and its own
``distillation`` section. The evaluated and exported network is the EMA of the student (``teacher`` in
a checkpoint's layout, as for DINOv2); the frozen teacher is not saved with the run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dinolite.config import Config, ConfigError, ConfigSection, check_choices
from dinolite.models import build_heads
from dinolite.models.info import backbone_forward_macs, model_summary
from dinolite.train.methods import dinov2, dinov2_config
from dinolite.train.methods.distillation_multi import MultiStudentDistillationObjective
from dinolite.train.methods.distillation_objective import DistillationObjective
from dinolite.train.methods.distillation_students import (
    DistilledStudent,
    check_students,
    student_configs,
    students_record,
)
from dinolite.train.methods.distillation_teacher import (
    MISSING_HEADS_CHOICES,
    RANDOM_TEACHER,
    build_frozen_teacher,
    read_teacher_weights,
)
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.pretrained import build_student_backbone, load_pretrained

IBOT_POSITIONS = ("sampled", "all")
NETWORK_CHOICES = ("", "teacher", "student")


@dataclass
class DistillationConfig:
    """The frozen teacher and what the student learns from it (docs/distillation.md)."""

    # the teacher: a dinolite run/checkpoint folder, an export (.safetensors), a timm/transformers folder,
    # hf-hub:ORG/NAME or a DINOv2 .pth; "random": a random teacher of the student's size (tests, dry runs)
    teacher_weights: str = ""
    teacher_network: str = ""  # of a run folder: teacher | student; empty: the run's evaluated network
    missing_heads: str = "error"  # a teacher without DINO/iBOT heads: error | random (frozen random heads)
    # where the iBOT loss is read on the student's unmasked global crops: sampled (the positions iBOT's
    # mask sampler draws, ibot.mask_*: DINOv3's code) | all (every patch of both global crops)
    ibot_positions: str = "sampled"
    # several students of one teacher forward (DINOv3's multi-student distillation): [{name: small, embed_dim:
    # 48}, ...], each a name and the student.* fields it changes; empty: the student section is the one student
    students: list[DistilledStudent] = field(default_factory=list)  # type: ignore[valid-type]


def validate_distillation(section: DistillationConfig, cfg: Config) -> None:
    check_choices(
        cfg,
        {
            "distillation.teacher_network": NETWORK_CHOICES,
            "distillation.missing_heads": MISSING_HEADS_CHOICES,
            "distillation.ibot_positions": IBOT_POSITIONS,
        },
    )
    check_students(cfg)


SECTION = ConfigSection("distillation", DistillationConfig, validate_distillation)


# ------------------------------------------------------------------------------------------ objective
def _student_parts(cfg: Config) -> dict[str, Any]:
    """The student of ``cfg.student`` with fresh heads (or ``student.pretrained_weights``' backbone)."""
    path = cfg.student.pretrained_weights
    backbone = build_student_backbone(cfg, load_pretrained(path) if path else None)
    heads = build_heads(cfg.dino, cfg.ibot, backbone.embed_dim)
    ibot_head = heads["ibot_head"] if cfg.ibot.separate_head else None
    return {"backbone": backbone, "dino_head": heads["dino_head"], "ibot_head": ibot_head}


def build_objective(cfg: Config) -> DistillationObjective:
    """The frozen teacher (``distillation.teacher_weights``) and the student of ``student.*`` (or each student
    of ``distillation.students``), DINOv2's losses and schedules."""
    dinov2.check_koleo_batch(cfg)
    if cfg.distillation.students:
        return _build_multi_student(cfg)
    parts = _student_parts(cfg)
    teacher = build_frozen_teacher(cfg)  # after the student: its random parts use their own seed
    return DistillationObjective(distillation_teacher=teacher, **parts, **dinov2.loss_arguments(cfg))


def _build_multi_student(cfg: Config) -> MultiStudentDistillationObjective:
    """Each student drawn from ``train.seed`` as if it were trained alone (its weights equal a single-student
    run's with its fields), then the one teacher."""
    students = {}
    for name, student_cfg in student_configs(cfg).items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            students[name] = _student_parts(student_cfg)
    teacher = build_frozen_teacher(cfg)
    for name, parts in students.items():
        ours, theirs = parts["backbone"].patch_size, teacher["backbone"].patch_size
        if ours != theirs:
            raise ConfigError(
                f"distillation.students: student {name!r} has patch size {ours}, the teacher "
                f"{cfg.distillation.teacher_weights!r} {theirs}; iBOT compares patch tokens position by position"
            )
    return MultiStudentDistillationObjective(teacher, students, **dinov2.loss_arguments(cfg))


# ------------------------------------------------------------------------------------------ views
def every_patch(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with every patch of every global crop as an iBOT position (``distillation.ibot_positions=all``),
    each image's positions weighted 1/#patches as iBOT weights its masked ones."""
    masks = torch.ones_like(batch["collated_masks"])
    flat = masks.flatten()
    weights = (1.0 / masks.sum(-1, dtype=torch.float32)).unsqueeze(-1).expand_as(masks).flatten()
    return {
        **batch,
        "collated_masks": masks,
        "mask_indices_list": flat.nonzero().flatten(),
        "masks_weight": weights,
        "n_masked_patches": torch.full((1,), int(flat.numel()), dtype=torch.long),
    }


def _collate_every_patch(collate: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return every_patch(collate(*args, **kwargs))


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    """DINOv2's collate; the masks only say where the iBOT loss is read (the student is not masked)."""
    collate = dinov2.build_collate(cfg)
    if cfg.distillation.ibot_positions == "all":
        return functools.partial(_collate_every_patch, collate)
    return collate


# ------------------------------------------------------------------------------------------ FLOPs
def _teacher_backbone_kwargs(cfg: Config) -> dict[str, Any] | None:
    """The teacher's architecture (read from its weights; the student's for a random teacher)."""
    source = cfg.distillation.teacher_weights
    if source == RANDOM_TEACHER or not source:
        return None
    return read_teacher_weights(source, cfg.distillation.teacher_network).spec.backbone_kwargs()


def training_flops(cfg: Config) -> dict[str, Any]:
    """One student's count (:func:`_single_student_flops`); with several students, the sum of each student's
    training and one teacher forward (``flops_students``: each student's share, its backward included)."""
    if not cfg.distillation.students:
        return _single_student_flops(cfg)
    each = {name: _single_student_flops(c) for name, c in student_configs(cfg).items()}
    teacher = next(iter(each.values()))["flops_teacher_per_image"]
    students = {name: flops["flops_per_image"] - flops["flops_teacher_per_image"] for name, flops in each.items()}
    per_image = teacher + sum(students.values())
    return {
        **next(iter(each.values())),
        "flops_students": students,
        "flops_per_image": int(round(per_image)),
        "flops_per_batch": int(round(per_image * cfg.train.batch_size_per_gpu)),
    }


def _single_student_flops(cfg: Config) -> dict[str, Any]:
    """DINOv2's count (:func:`dinolite.train.methods.dinov2.training_flops`) with the forward of the frozen
    teacher's backbone in place of the EMA teacher's (the EMA network is never run in training); the
    teacher's heads are counted at the student's head sizes."""
    summary = model_summary(cfg)
    flops = dinov2.training_flops(cfg, summary)
    kwargs = _teacher_backbone_kwargs(cfg)
    if kwargs is None:
        return flops
    same_arch_global = 2 * summary["macs_global_crop"]
    teacher_global = 2 * backbone_forward_macs(kwargs, cfg.crops.global_crops_size)
    teacher = flops["flops_teacher_per_image"] + 2 * (teacher_global - same_arch_global)  # 2 global crops
    per_image = flops["flops_student_per_image"] + teacher
    return {
        **flops,
        "flops_teacher_global_crop": teacher_global,
        "flops_teacher_per_image": int(round(teacher)),
        "flops_per_image": int(round(per_image)),
        "flops_per_batch": int(round(per_image * cfg.train.batch_size_per_gpu)),
    }


def _student_temp(cfg: Config) -> float:
    return cfg.teacher.student_temp


METHOD = register_method(
    MethodSpec(
        name="distillation",
        paper="Oquab et al. 2023, DINOv2 Sec. 5 (a frozen teacher's DINO + iBOT targets, KoLeo, EMA of the student)",
        build_objective=build_objective,
        build_transform=dinov2.build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="teacher",
        head_names=dinov2.head_names,
        demo_preset="demo_distillation",
        # The targets come from a frozen network that cannot collapse: the student's features are watched.
        monitor_embeddings={"student_cls": "student_backbone", "teacher_head_logits": "head"},
        config_sections=(*dinov2_config.SECTIONS, SECTION),
        student_temp=_student_temp,
        extra_record=students_record,
    )
)
