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

from dinolite.checkpoint import load_consolidated_state_dict, resolve_checkpoint_dir
from dinolite.config import load_config
from dinolite.export.load import PretrainedWeights, check_state_dict_fits
from dinolite.export.spec import spec_from_backbone
from dinolite.models import build_backbone


def _iteration_of(checkpoint_dir: Path) -> Optional[int]:
    match = re.search(r"(\d+)$", checkpoint_dir.name)
    return int(match.group(1)) if match else None


def consolidate_checkpoint(path: str | Path, model: str = "teacher", with_heads: bool = False) -> PretrainedWeights:
    """Full (unsharded) backbone state dict and architecture record of a training checkpoint.

    ``path`` is a run's output directory (the latest checkpoint is used) or one checkpoint directory.
    With ``with_heads``, the DINO/iBOT heads and the centering buffers come too (keys ``dino_head.*``,
    ``ibot_head.*`` and the objective's extra state), so that training can continue from the export.
    """

    checkpoint_dir = resolve_checkpoint_dir(path)
    config_file = checkpoint_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.yaml; is this a dinolite training checkpoint?")
    cfg = load_config(config_file)
    backbone_state = load_consolidated_state_dict(checkpoint_dir, model=model, part="backbone")

    # The architecture record comes from a weightless (meta) model checked against the saved shapes:
    # callers build the one real backbone they need from the record (no random init of a ViT-g here).
    with torch.device("meta"):
        backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
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

    heads: Optional[dict[str, torch.Tensor]] = None
    if with_heads:
        heads = {}
        # With ibot.separate_head=false the iBOT head is the DINO head and is stored once.
        parts = ("dino_head", "ibot_head") if cfg.ibot.separate_head else ("dino_head",)
        for part in parts:
            for key, value in load_consolidated_state_dict(checkpoint_dir, model=model, part=part).items():
                heads[f"{part}.{key}"] = value
        for key, value in load_consolidated_state_dict(checkpoint_dir, model="objective", part="extra").items():
            heads[f"extra.{key}"] = value
        spec = dataclasses.replace(spec, extra={**spec.extra, "separate_ibot_head": cfg.ibot.separate_head})
    return PretrainedWeights(spec=spec, backbone=backbone_state, heads=heads)
