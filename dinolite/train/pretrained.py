"""``student.pretrained_weights``: reading them and loading them into the student every method builds.

Any source :func:`dinolite.export.load.load_pretrained` reads (a DINOv2 ``.pth``, a dinolite export with
or without heads, timm / transformers DINOv2 weights, ``hf-hub:ORG/NAME``), with one loader and the same
checks for every method (a pickle is refused, shapes are compared key by key, the error names the key).
"""

from __future__ import annotations

from typing import Any, Collection

import torch

from dinolite.config import Config, ConfigError
from dinolite.export.load import load_pretrained as load_exported_weights
from dinolite.export.load import load_state_dict_strict
from dinolite.models import build_backbone
from dinolite.models.vision_transformer import DinoVisionTransformer
from dinolite.train.pretrained_arch import architecture_from_weights, resample_pos_embed


def load_pretrained(path: str) -> Any:
    """Read ``student.pretrained_weights``: a DINOv2 ``.pth``, a dinolite export (with heads if exported
    ``--with-heads``), timm / transformers DINOv2 weights (file or hub folder) or ``hf-hub:ORG/NAME``.
    Returns :class:`dinolite.export.load.PretrainedWeights`."""
    try:
        return load_exported_weights(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"student.pretrained_weights={path!r}: {exc}") from exc


def load_pretrained_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: str) -> None:
    """Strict load with a message naming the key, the mismatching keys and shapes."""

    load_state_dict_strict(module, state_dict, origin=f"student.pretrained_weights={path!r} ({what})")


def pretrained_part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.`` with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def build_student_backbone(cfg: Config, pretrained: Any = None) -> DinoVisionTransformer:
    """The student backbone at ``crops.global_crops_size``, initialised from ``student.pretrained_weights``
    when set: every method builds its student here, so every method takes the weights with the same
    loader and the same checks (a pickle is refused, shapes are compared key by key, the error names the
    key). ``pretrained``: the :class:`~dinolite.export.load.PretrainedWeights` already read from that path
    (DINOv2 reads it once for its heads too). Build a teacher / target copy after this, so both start
    from the weights."""
    backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
    path = cfg.student.pretrained_weights
    if path:
        weights = pretrained if pretrained is not None else load_pretrained(path)
        architecture_from_weights(cfg, weights.spec, path)  # every shape-making field must agree: names both
        grid = (backbone.patch_embed.grid_size, backbone.patch_embed.grid_size)
        load_pretrained_into(backbone, resample_pos_embed(weights.backbone, weights.spec, grid, path), "backbone", path)
    return backbone


def resolve_pretrained_architecture(cfg: Config, user_set: Collection[str]) -> tuple[Config, list[str]]:
    """``cfg`` with the student's architecture read from ``student.pretrained_weights`` for every field
    not in ``user_set`` (the dotted keys the user set), and one line per field changed; a user-set field
    the weights contradict is a :class:`ConfigError` naming both values. Unchanged without weights.
    Commands call it before training, so the run's saved config describes the model it trains."""
    path = cfg.student.pretrained_weights
    if not path:
        return cfg, []
    return architecture_from_weights(cfg, load_pretrained(path).spec, path, user_set)
