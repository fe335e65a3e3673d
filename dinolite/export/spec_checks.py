"""Type and range checks for every field of a backbone record, naming the file and the key at fault.

A record (safetensors header, sidecar JSON, a hub folder's ``config.json``, a timm ``pretrained_cfg``,
a transformers ``preprocessor_config.json``) comes with weights someone handed over. Its size fields are
also checked against the tensor shapes (:func:`dinolite.export.spec.check_spec_against_shapes`); the rest
set how evaluation builds its inputs (``train_img_size``: a crop of 40000 pixels is a 6 GB tensor per
image; ``mean``/``std``: a zero std divides by zero), so each field gets a type and a range here:

- sizes (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``img_size``): integers >= 1;
  ``num_register_tokens``: >= 0; ``iteration``: none or >= 0;
- ``train_img_size``: none or an integer from 1 to :data:`MAX_IMAGE_SIDE` pixels;
- ``mean``: three finite numbers; ``std``: three finite numbers > 0;
- ``mlp_ratio``: a finite number in (0, :data:`MAX_MLP_RATIO`]; ``layerscale``: none or finite > 0;
  ``interpolate_offset``: a finite number in [0, 1);
- flags (``qkv_bias``, ``proj_bias``, ``ffn_bias``, ``interpolate_antialias``, ``cls_token``): JSON booleans, not
  ``"no"`` (which Python would take for true);
- ``ffn_layer``: one of the FFNs the models build; ``format_version``: an integer from 1 to the version
  this dinolite writes; text fields: text; ``extra``: a JSON object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from dinolite.export.errors import ExportFormatError
from dinolite.models.ffn import FFN_LAYERS

MAX_IMAGE_SIDE = 4096  # pixels; the largest eval crop a record may ask for (a 3x4096x4096 float image is 200 MB)
MAX_MLP_RATIO = 64.0
RECORD_FORMAT_VERSION = 1  # the newest record format this dinolite reads (spec.FORMAT_VERSION)

Check = Callable[[Any], Any]  # returns the value (normalised) or raises _Expected naming what was expected


class _Expected(ValueError):
    pass


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(lowest: int, highest: int | None = None, optional: bool = False) -> Check:
    span = f"from {lowest} to {highest}" if highest is not None else f">= {lowest}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value) or value < lowest or (highest is not None and value > highest):
            raise _Expected(f"{'none or ' if optional else ''}an integer {span}")
        return value

    return check


def number(lowest: float, highest: float, low_open: bool, high_open: bool, optional: bool = False) -> Check:
    span = f"{'(' if low_open else '['}{lowest:g}, {highest:g}{')' if high_open else ']'}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        low_ok = value > lowest if low_open else value >= lowest
        if not _is_number(value) or not low_ok or not (value < highest if high_open else value <= highest):
            raise _Expected(f"{'none or ' if optional else ''}a finite number in {span}")
        return float(value)

    return check


def triple(positive: bool) -> Check:
    def check(value: Any) -> Any:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(_is_number(v) and (v > 0 or not positive) for v in value)
        ):
            raise _Expected(f"three finite numbers{' > 0' if positive else ''} (one per RGB channel)")
        return tuple(float(v) for v in value)

    return check


def flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Expected("true or false")
    return value


def text(value: Any) -> Any:
    if not isinstance(value, str):
        raise _Expected("text")
    return value


def choice(*options: str) -> Check:
    def check(value: Any) -> Any:
        if value not in options:
            raise _Expected(f"one of {', '.join(options)}")
        return value

    return check


def json_object(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise _Expected("a JSON object")
    return dict(value)


FIELD_CHECKS: dict[str, Check] = {
    "arch": text,
    "embed_dim": integer(1),
    "depth": integer(1),
    "num_heads": integer(1),
    "patch_size": integer(1),
    "img_size": integer(1),
    "num_register_tokens": integer(0),
    "ffn_layer": choice(*sorted(FFN_LAYERS)),
    "mlp_ratio": number(0.0, MAX_MLP_RATIO, low_open=True, high_open=False),
    "layerscale": number(0.0, math.inf, low_open=True, high_open=True, optional=True),
    "qkv_bias": flag,
    "proj_bias": flag,
    "ffn_bias": flag,
    "interpolate_antialias": flag,
    "cls_token": flag,
    "position": choice("absolute", "shared_rel_pos_bias", "rope"),
    "rope_normalize_coords": choice("separate", "max", "min"),
    "layernorm_eps": number(0.0, 1.0, low_open=True, high_open=True),
    "interpolate_offset": number(0.0, 1.0, low_open=False, high_open=True),
    "train_img_size": integer(1, MAX_IMAGE_SIDE, optional=True),
    "mean": triple(positive=False),
    "std": triple(positive=True),
    "iteration": integer(0, optional=True),
    "source": text,
    "dinolite_version": text,
    "format": text,
    "format_version": integer(1, RECORD_FORMAT_VERSION),
    "extra": json_object,
}


def check_value(value: Any, check: Check, where: str) -> Any:
    """``check(value)``, or :class:`ExportFormatError` ``<where>=<value> is not valid: expected ...``.

    ``where`` names the file and the key (``config.json: num_attention_heads``)."""
    try:
        return check(value)
    except _Expected as exc:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ExportFormatError(f"{where}={shown} is not valid: expected {exc}") from None


def check_record_fields(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Every field present in a raw record checked and normalised (lists of numbers -> tuples)."""
    return {key: check_value(value, FIELD_CHECKS[key], f"{origin}: {key}") for key, value in data.items()}


def check_spec_fields(spec: Any, origin: str) -> None:
    """Every field of an assembled :class:`~dinolite.export.spec.BackboneSpec` (from a record, from tensor
    shapes plus a foreign folder's config, or from a checkpoint's config) in type and range."""
    for key, check in FIELD_CHECKS.items():
        check_value(getattr(spec, key), check, f"{origin}: {key}")
