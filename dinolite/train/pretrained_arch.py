"""Continued pretraining from released weights: the student's architecture read from the weights, and
their position embeddings resampled to the training resolution.

Every released DINOv2 backbone was trained at 518 px (a 37 x 37 patch grid); pretraining runs at 224
(16 x 16 with patch 14). :func:`resample_pos_embed` resamples the file's position embeddings once, on
load, with the same bicubic interpolation the source model applies when it meets a 224-px image
(DINOv2's ``interpolate_pos_encoding``, with the source's own ``interpolate_offset`` and
``interpolate_antialias``): at iteration 0 the student's features at 224 px equal the source model's.

:func:`architecture_from_weights` makes the student the model the weights describe. A field the user set
(on the command line or in their own config file) must agree with the weights, else the error names
both values; a field left to the preset or the defaults (``--config vitl14`` says SwiGLU, the released
ViT-L/14 has an MLP) is read from the weights, and each one changed is reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Optional

import torch

from dinolite.config import Config, ConfigError, validate
from dinolite.export.spec import BackboneSpec
from dinolite.models.backbone_factory import ARCHITECTURES
from dinolite.models.pos_embed import interpolate_pos_embed

SIZE_FIELDS = ("embed_dim", "depth", "num_heads")
# student.<field> -> the weights' value of it (BackboneSpec -> comparable value)
OTHER_FIELDS = (
    "patch_size",
    "num_register_tokens",
    "ffn_layer",
    "layerscale",
    "qkv_bias",
    "proj_bias",
    "ffn_bias",
    "interpolate_antialias",
    "interpolate_offset",
    "cls_token",
)
RESAMPLING_FIELDS = ("interpolate_antialias", "interpolate_offset")
EVERY_FIELD = frozenset(("arch", *SIZE_FIELDS, *OTHER_FIELDS))


def _ffn(kind: str) -> str:
    return "swiglu" if kind == "swiglufused" else kind  # DINOv2's fused SwiGLU: the same weights


def _comparable(field: str, value: Any) -> Any:
    if field == "ffn_layer":
        return _ffn(value)
    if field == "layerscale":  # the weights hold the gammas: only whether the blocks have them matters
        return bool(value)
    return value


def _student_value(student: Any, field: str) -> Any:
    if field in SIZE_FIELDS:
        set_value = getattr(student, field)
        return set_value if set_value is not None else ARCHITECTURES[student.arch][field]
    return _comparable(field, getattr(student, field))


def _weights_value(spec: BackboneSpec, field: str) -> Any:
    return _comparable(field, getattr(spec, field))


def _new_student_value(spec: BackboneSpec, field: str, current: Any) -> Any:
    """The config value that builds the weights' ``field`` (LayerScale: any nonzero init, the file's
    gammas replace it)."""
    if field == "layerscale":
        return (current or 1.0e-5) if spec.layerscale is not None else 0.0
    return getattr(spec, field)


def _check_mlp_ratio(spec: BackboneSpec, path: str) -> None:
    if spec.mlp_ratio != 4.0:
        raise ConfigError(
            f"student.pretrained_weights={path!r}: MLP ratio {spec.mlp_ratio}; dinolite's student builds 4.0 "
            "(every DINOv2 size)"
        )


def architecture_from_weights(
    cfg: Config, spec: BackboneSpec, path: str, user_set: Optional[Collection[str]] = None
) -> tuple[Config, list[str]]:
    """``cfg`` with the student's architecture read from the weights' ``spec``, and one line per field
    changed. ``user_set``: the ``student.<field>`` keys the user set; None: every field counts as set, so
    any difference in the weights' shapes is an error (the model's resampling fields are then the
    config's). A user-set field that differs raises :class:`ConfigError` naming both values."""
    _check_mlp_ratio(spec, path)
    student = cfg.student
    explicit = EVERY_FIELD if user_set is None else {k.removeprefix("student.") for k in user_set}
    changes: dict[str, Any] = {}
    lines: list[str] = []
    # The arch is a name for sizes: one the user set is held to its sizes below, not to the weights' name.
    if spec.arch in ARCHITECTURES and spec.arch != student.arch and "arch" not in explicit:
        _conflict_or_adopt("arch", student.arch, spec.arch, explicit, path, changes, lines)
    arch = changes.get("arch", student.arch)
    for field in SIZE_FIELDS:
        theirs, ours = getattr(spec, field), _student_value(student, field)
        from_arch = getattr(student, field) is None and "arch" in explicit  # the size an arch the user set gives
        if theirs != ours and from_arch:
            raise ConfigError(
                f"student.arch={student.arch} ({field} {ours}) conflicts with student.pretrained_weights={path!r}, "
                f"whose {field} is {theirs}; leave student.arch unset to take the weights' architecture"
            )
        if theirs != ours:
            _conflict_or_adopt(field, ours, theirs, explicit, path, changes, lines)
        # A size the (new) arch's table gives is left to it (null), as in the shipped presets.
        if field not in explicit and arch in ARCHITECTURES and changes.get(field, ours) == ARCHITECTURES[arch][field]:
            changes[field] = None
    for field in OTHER_FIELDS:
        if user_set is None and field in RESAMPLING_FIELDS:
            continue  # how the model resamples at other sizes, not its weights: the config's own
        if _weights_value(spec, field) != _student_value(student, field):
            new = _new_student_value(spec, field, student.layerscale)
            _conflict_or_adopt(field, getattr(student, field), new, explicit, path, changes, lines)
    changes = {k: v for k, v in changes.items() if v != getattr(student, k)}
    if not changes:
        return cfg, lines
    resolved = dataclasses.replace(cfg, student=dataclasses.replace(student, **changes))
    try:
        validate(resolved)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (with the architecture of student.pretrained_weights={path!r}: {'; '.join(lines)})"
        ) from None
    return resolved, lines


def _conflict_or_adopt(
    field: str, ours: Any, theirs: Any, explicit: Collection[str], path: str, changes: dict, lines: list[str]
) -> None:
    if field in explicit:
        raise ConfigError(
            f"student.{field}={ours} conflicts with student.pretrained_weights={path!r}, whose {field} is "
            f"{theirs}; leave student.{field} unset to take the weights' value"
        )
    changes[field] = theirs
    lines.append(f"student.{field}={theirs} from student.pretrained_weights (the config said {ours})")


def resample_pos_embed(
    state_dict: dict[str, torch.Tensor], spec: BackboneSpec, grid: tuple[int, int], path: str
) -> dict[str, torch.Tensor]:
    """``state_dict`` with its ``pos_embed`` resampled to ``grid`` (patches per side) as the source model
    resamples it at that resolution: bicubic, the source's offset and antialiasing. Unchanged when the
    grids agree."""
    pos = state_dict.get("pos_embed")
    if pos is None or pos.shape[1] - 1 == grid[0] * grid[1]:
        return state_dict
    try:
        resampled = interpolate_pos_embed(pos, grid, spec.interpolate_offset, spec.interpolate_antialias)
    except ValueError as exc:
        raise ConfigError(f"student.pretrained_weights={path!r}: {exc}") from None
    return {**state_dict, "pos_embed": resampled.to(pos.dtype).contiguous()}
