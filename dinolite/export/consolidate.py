"""Turn a sharded training checkpoint into a single backbone (+ heads) ready to write.

This is the one export module that reads training checkpoints, so it is the one that imports
``dinolite.checkpoint``; :mod:`dinolite.export.load` never does.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import torch

from dinolite.checkpoint import checkpoint_modules, load_consolidated_state_dict, method_record, resolve_checkpoint_dir
from dinolite.config import load_config
from dinolite.export.load import PretrainedWeights, check_spec, check_state_dict_fits
from dinolite.export.spec import spec_from_backbone
from dinolite.models import build_backbone

NETWORKS = ("teacher", "student")


def _iteration_of(checkpoint_dir: Path) -> Optional[int]:
    match = re.search(r"(\d+)$", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def consolidate_checkpoint(
    path: str | Path, model: Optional[str] = None, with_heads: bool = False
) -> PretrainedWeights:
    """Full (unsharded) backbone state dict and architecture record of a training checkpoint.

    ``path`` is a run's output directory (the latest checkpoint is used) or one checkpoint directory.
    ``model`` is the network, ``"teacher"`` or ``"student"``; ``None`` takes the method's default (the
    ``eval_network`` of the checkpoint's method record, :func:`dinolite.checkpoint.method_record`).
    With ``with_heads``, the method's heads that this network has come too (keys ``<head>.*``, e.g.
    ``dino_head.*``), and the objective's extra state (``extra.*``: DINO's centres), so that training
    can continue from the export.
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
    available = checkpoint_modules(checkpoint_dir, model)
    if "backbone" not in available:
        raise ValueError(
            f"{checkpoint_dir}: the {method['name']} checkpoint has no {model} backbone "
            f"(its default network is {method['eval_network']!r})"
        )
    # The architecture record comes from a weightless (meta) model: the saved shapes are checked against
    # it before anything is allocated, and callers build the one real backbone they need from the record
    # (no random init of a ViT-g here).
    with torch.device("meta"):
        backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
    expected = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    backbone_state = load_consolidated_state_dict(checkpoint_dir, model=model, part="backbone", expected=expected)
    check_state_dict_fits(backbone, backbone_state, origin=str(checkpoint_dir))
    spec = spec_from_backbone(
        backbone,
        train_img_size=cfg.crops.global_crops_size,
        mean=tuple(cfg.crops.mean),
        std=tuple(cfg.crops.std),
        iteration=_iteration_of(checkpoint_dir),
        source=model,
        interpolate_antialias=cfg.student.interpolate_antialias,
        interpolate_offset=cfg.student.interpolate_offset,
    )
    check_spec(spec, str(config_file))  # the same ranges as any record (a config.yaml is a file handed over too)

    heads: Optional[dict[str, torch.Tensor]] = None
    if with_heads:
        heads = {}
        # The declared heads this network has (a teacher has no predictor; a head shared by two roles,
        # DINOv2's ibot_head with ibot.separate_head=false, is one module stored once).
        parts = [part for part in method["heads"] if part in available]
        for part in parts:
            for key, value in load_consolidated_state_dict(checkpoint_dir, model=model, part=part).items():
                heads[f"{part}.{key}"] = value
        extra = load_consolidated_state_dict(checkpoint_dir, model="objective", part="extra", missing_ok=True)
        heads.update({f"extra.{key}": value for key, value in extra.items()})
        spec = dataclasses.replace(spec, extra={**spec.extra, "method": method["name"], "heads": parts})
    return PretrainedWeights(spec=spec, backbone=backbone_state, heads=heads)
