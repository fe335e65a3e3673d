"""Turn a sharded training checkpoint into a single backbone (+ heads) ready to write.

This is the one export module that reads training checkpoints, so it is the one that imports
``dinolite.checkpoint``; :mod:`dinolite.export.load` never does.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Optional

import torch

from dinolite.checkpoint import checkpoint_modules, load_consolidated_state_dict, method_record, resolve_checkpoint_dir
from dinolite.config import load_config
from dinolite.config.schema import StudentConfig
from dinolite.export.load import PretrainedWeights, check_spec, check_state_dict_fits
from dinolite.export.spec import spec_from_backbone
from dinolite.models import build_backbone

NETWORKS = ("teacher", "student")


def _iteration_of(checkpoint_dir: Path) -> Optional[int]:
    match = re.search(r"(\d+)$", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def _student_architecture(
    cfg_student: StudentConfig, method: dict, student: Optional[str], where: Path
) -> tuple[StudentConfig, str]:
    """The architecture to rebuild and the module prefix of the network's parts: the ``student`` section and
    ``""`` for a one-student run; for a multi-student run (its method record's ``students``), the named
    student's recorded section and ``"<student>."``."""
    students = method.get("students")
    if students is None:
        if student is not None:
            raise ValueError(f"--student {student}: {where} is a one-student {method['name']} run; drop --student")
        return cfg_student, ""
    names = list(students)
    if student is None:
        raise ValueError(
            f"{where}: a multi-student {method['name']} run of {len(names)} students ({', '.join(names)}); "
            "choose one with --student NAME"
        )
    if student not in students:
        near = difflib.get_close_matches(student, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"--student {student}: no such student in {where} (its students: {', '.join(names)}){hint}")
    fields = {f.name for f in dataclasses.fields(cfg_student)}
    unknown = sorted(set(students[student]) - fields)
    if unknown:
        raise ValueError(f"{where / 'state.json'}: method.students.{student} has unknown student fields {unknown}")
    return dataclasses.replace(cfg_student, **students[student]), f"{student}."


def consolidate_checkpoint(
    path: str | Path, model: Optional[str] = None, with_heads: bool = False, student: Optional[str] = None
) -> PretrainedWeights:
    """Full (unsharded) backbone state dict and architecture record of a training checkpoint.

    ``path`` is a run's output directory (the latest checkpoint is used) or one checkpoint directory.
    ``model`` is the network, ``"teacher"`` or ``"student"``; ``None`` takes the method's default (the
    ``eval_network`` of the checkpoint's method record, :func:`dinolite.checkpoint.method_record`).
    With ``with_heads``, the method's heads that this network has come too (keys ``<head>.*``, e.g.
    ``dino_head.*``), and the objective's extra state (``extra.*``: DINO's centres), so that training
    can continue from the export. ``student``: which student of a multi-student distillation run (its
    architecture from the checkpoint's method record, its modules under ``<network>.<student>.``); required
    for such a run, refused for any other.
    """
    checkpoint_dir = resolve_checkpoint_dir(path)
    config_file = checkpoint_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.yaml; is this a dinolite training checkpoint?")
    # export never imports the trainer that registers the methods' sections: they stay plain data, and
    # only the shared sections (student, crops) are read here
    cfg = load_config(config_file, unknown_sections="keep")
    method = method_record(checkpoint_dir)
    model = model or method["eval_network"]
    if model not in NETWORKS:
        raise ValueError(f"network {model!r}: expected one of {', '.join(NETWORKS)}")
    student_cfg, prefix = _student_architecture(cfg.student, method, student, checkpoint_dir)
    available = checkpoint_modules(checkpoint_dir, f"{model}.{prefix}".rstrip("."))
    if "backbone" not in available:
        raise ValueError(
            f"{checkpoint_dir}: the {method['name']} checkpoint has no {model} backbone "
            f"(its default network is {method['eval_network']!r})"
        )
    # The architecture record comes from a weightless (meta) model: the saved shapes are checked against
    # it before anything is allocated, and callers build the one real backbone they need from the record
    # (no random init of a ViT-g here).
    with torch.device("meta"):
        backbone = build_backbone(student_cfg, img_size=cfg.crops.global_crops_size)
    expected = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    backbone_state = load_consolidated_state_dict(
        checkpoint_dir, model=model, part=f"{prefix}backbone", expected=expected
    )
    check_state_dict_fits(backbone, backbone_state, origin=str(checkpoint_dir))
    spec = spec_from_backbone(
        backbone,
        train_img_size=cfg.crops.global_crops_size,
        mean=tuple(cfg.crops.mean),
        std=tuple(cfg.crops.std),
        iteration=_iteration_of(checkpoint_dir),
        source=model,
        interpolate_antialias=student_cfg.interpolate_antialias,
        interpolate_offset=student_cfg.interpolate_offset,
    )
    if student is not None:
        spec = dataclasses.replace(spec, extra={**spec.extra, "student": student})
    check_spec(spec, str(config_file))  # the same ranges as any record (a config.yaml is a file handed over too)

    heads: Optional[dict[str, torch.Tensor]] = None
    if with_heads:
        heads = {}
        # The declared heads this network has (a teacher has no predictor; a head shared by two roles,
        # DINOv2's ibot_head with ibot.separate_head=false, is one module stored once).
        parts = [part for part in method["heads"] if part in available]
        for part in parts:
            for key, value in load_consolidated_state_dict(checkpoint_dir, model=model, part=prefix + part).items():
                heads[f"{part}.{key}"] = value
        extra = load_consolidated_state_dict(checkpoint_dir, model="objective", part="extra", missing_ok=True)
        heads.update({f"extra.{key}": value for key, value in extra.items()})
        spec = dataclasses.replace(spec, extra={**spec.extra, "method": method["name"], "heads": parts})
    return PretrainedWeights(spec=spec, backbone=backbone_state, heads=heads)
