"""Load exported backbones without dinolite's trainer (no FSDP, no optimizer, no pickle).

Accepted files:
- ``NAME.safetensors`` written by ``python -m dinolite.commands.export``: the architecture record in the
  safetensors header is authoritative (it was written with the weights, in the same file); the sidecar
  ``NAME.safetensors.json`` (or a legacy ``NAME.json``) is read only for files whose header has none;
- DINOv2-layout ``.pth`` files such as the released ``dinov2_vitl14_pretrain.pth``, read with
  ``torch.load(weights_only=True)`` (tensors only: a file that needs unpickling of arbitrary objects is
  refused), every tensor checked against the bytes its storage holds (a stride-0 view posing as a large
  matrix is refused: :mod:`dinolite.checkpoint.tensor_files`), and the architecture inferred from the
  tensor shapes;
- the same weights in timm's or transformers' key layout (their DINOv2 checkpoints, with or without
  registers): converted to DINOv2's layout (:mod:`dinolite.export.timm_format`,
  :mod:`dinolite.export.transformers_format`);
- DINOv3's backbones (``.pth`` or ``.safetensors`` in DINOv3's key layout: ``rope_embed.periods``, ``storage_tokens``,
  no ``pos_embed``), or DINOv3's ViT in timm's or transformers' keys: converted to dinolite's ``pos_embed=rope``
  backbone (:mod:`dinolite.export.dinov3_format`, :mod:`dinolite.export.dinov3_hf_format`);
- a folder in a HuggingFace layout (timm: ``config.json`` + ``model.safetensors``; transformers:
  ``Dinov2Model``; older folders with ``pytorch_model.bin`` instead, read like a ``.pth``), and
  ``hf-hub:ORG/NAME`` for such a folder on the Hub (:mod:`dinolite.export.hub`).

A record (header or sidecar) is never trusted to size a model: its width, depth, patch size, position
grid, register tokens and FFN type are checked against the tensor shapes read from the safetensors
header (no tensor data read), then every key and shape against a model on the ``meta`` device; only
then is a real model allocated. A 1 KB JSON asking for width 2048 fails at once, naming the JSON, the
field and both values. Every field of every record (and of a foreign folder's configs) is also type- and
range-checked (:mod:`dinolite.export.spec_checks`), naming the file and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from dinolite.checkpoint.tensor_files import TensorBudgetError, load_tensor_file
from dinolite.export.dinov3_format import DINOV3_LAYERNORM_EPS, from_dinov3_state_dict, is_dinov3_layout
from dinolite.export.dinov3_hf_format import (
    from_timm_dinov3_state_dict,
    from_transformers_dinov3_state_dict,
    is_timm_dinov3_layout,
    is_transformers_dinov3_layout,
)
from dinolite.export.hub import (
    CONFIG_NAME,
    PICKLE_WEIGHTS_NAME,
    TIMM_RESAMPLING,
    WEIGHTS_NAME,
    download_hub_source,
    folder_spec_overrides,
    folder_weights,
    is_hub_source,
    read_folder_config,
    transformers_resampling,
)
from dinolite.export.spec import (
    BackboneSpec,
    ExportFormatError,
    check_spec_against_shapes,
    spec_from_state_dict,
)
from dinolite.export.spec_checks import check_spec_fields
from dinolite.export.timm_format import from_timm_state_dict, is_timm_layout
from dinolite.export.transformers_format import (
    from_transformers_state_dict,
    is_transformers_layout,
)
from dinolite.models import DinoVisionTransformer

HEADS_SUFFIX = ".heads.safetensors"
SPEC_METADATA_KEY = "dinolite_backbone"


@dataclass
class PretrainedWeights:
    """What an export holds: the backbone, and with ``--with-heads`` the heads and centering state."""

    spec: BackboneSpec
    backbone: dict[str, torch.Tensor]
    heads: Optional[dict[str, torch.Tensor]] = None  # "dino_head.*", "ibot_head.*", "dino_center", ...


def spec_path_for(weights_path: str | Path) -> Path:
    """The sidecar record of one export: ``NAME.<ext>.json``, so ``m.onnx`` and ``m.safetensors`` written
    side by side each keep their own record (a shared ``m.json`` would belong to whichever came last)."""
    path = Path(weights_path)
    return path.with_name(path.name + ".json")


def legacy_spec_path_for(weights_path: str | Path) -> Path:
    """``NAME.json``: where exports before the per-export sidecar kept their record."""
    return Path(weights_path).with_suffix(".json")


def heads_path_for(weights_path: str | Path) -> Path:
    path = Path(weights_path)
    return path.with_name(path.stem + HEADS_SUFFIX)


def _read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata from a safetensors header; no tensor data is read."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ExportFormatError(
            f"{path}: cannot read as safetensors (truncated or not a safetensors file): {exc}"
        ) from exc
    return shapes, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ExportFormatError(
            f"{path}: cannot read as safetensors (truncated or not a safetensors file): {exc}"
        ) from exc
    return tensors, metadata


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = load_tensor_file(path)  # weights_only, and no tensor larger than its bytes in the file
    except TensorBudgetError as exc:
        raise ExportFormatError(str(exc)) from exc
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (truncated zip), EOFError...
        raise ExportFormatError(
            f"{path}: cannot load with weights_only=True (truncated, or holds objects other than tensors): {exc}"
        ) from exc
    if isinstance(obj, dict) and "teacher" in obj and isinstance(obj["teacher"], dict):
        # DINOv2 training checkpoints nest the teacher: keep its backbone.
        obj = {k.removeprefix("backbone."): v for k, v in obj["teacher"].items() if k.startswith("backbone.")}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportFormatError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _converted(
    convert: Callable[[dict[str, torch.Tensor], str], dict[str, torch.Tensor]],
    state_dict: dict[str, torch.Tensor],
    origin: str,
    layout: str,
) -> dict[str, torch.Tensor]:
    """``convert(state_dict, origin)``; a malformed file (a key of a set missing, a tensor with too few
    dimensions) becomes an error naming it instead of a KeyError/IndexError traceback."""
    try:
        return convert(state_dict, origin)
    except ExportFormatError:
        raise
    except (KeyError, IndexError, ValueError) as exc:
        raise ExportFormatError(f"{origin}: not a {layout} DINOv2 state dict ({type(exc).__name__}: {exc})") from exc


def layout_resampling(state_dict: dict[str, torch.Tensor]) -> dict[str, object]:
    """The resampling of the library whose key layout ``state_dict`` has (timm's, transformers'); DINOv2's
    own layout: none (the record's defaults are DINOv2's). DINOv3's: its released ViTs' LayerNorm eps."""
    if is_dinov3_layout(state_dict) or is_timm_dinov3_layout(state_dict) or is_transformers_dinov3_layout(state_dict):
        return {"layernorm_eps": DINOV3_LAYERNORM_EPS, "source": "dinov3"}
    if is_transformers_layout(state_dict):
        return transformers_resampling(any("register_tokens" in key for key in state_dict))
    if is_timm_layout(state_dict) or ("cls_token" in state_dict and "mask_token" not in state_dict):
        return dict(TIMM_RESAMPLING)
    return {}


def to_dinov2_layout(state_dict: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """timm / transformers / DINOv3 key layouts -> DINOv2's (dinolite's); DINOv2's own passes through unchanged."""
    if is_dinov3_layout(state_dict):
        return _converted(from_dinov3_state_dict, state_dict, origin, "DINOv3")
    # DINOv3's ViT in timm / transformers: the hub's 224 px record, RoPE base 100 (every released model's)
    if is_transformers_dinov3_layout(state_dict):
        return _converted(lambda sd, _: from_transformers_dinov3_state_dict(sd, 224), state_dict, origin, "DINOv3")
    if is_timm_dinov3_layout(state_dict):
        return _converted(lambda sd, _: from_timm_dinov3_state_dict(sd, 224), state_dict, origin, "DINOv3")
    if is_transformers_layout(state_dict):
        return _converted(from_transformers_state_dict, state_dict, origin, "transformers")
    if is_timm_layout(state_dict) or ("cls_token" in state_dict and "mask_token" not in state_dict):
        return _converted(from_timm_state_dict, state_dict, origin, "timm")
    return state_dict


def _drop_neutral_extras(
    state_dict: dict[str, torch.Tensor], spec: BackboneSpec
) -> tuple[dict[str, torch.Tensor], BackboneSpec]:
    """transformers always has LayerScale and attention-output / MLP biases; a backbone exported without
    them carries LayerScale 1 and zero biases there, which its record does not build. Drop those (they
    change nothing); anything else (e.g. fine-tuned in transformers) stays, and the record grows to fit."""
    out = dict(state_dict)
    groups = {  # record field: (keys, their neutral value, the field's value when absent)
        "layerscale": (r"^blocks\.\d+\.ls[12]\.gamma$", 1.0, None),
        "proj_bias": (r"^blocks\.\d+\.attn\.proj\.bias$", 0.0, False),
        "ffn_bias": (r"^blocks\.\d+\.mlp\.(fc1|fc2|w12|w3)\.bias$", 0.0, False),
    }
    changes: dict[str, object] = {}
    for field_name, (pattern, neutral, absent) in groups.items():
        if getattr(spec, field_name) != absent:
            continue
        keys = [k for k in out if re.match(pattern, k)]
        if all(bool((out[k] == neutral).all()) for k in keys):
            for k in keys:
                del out[k]
        else:
            changes[field_name] = 1.0e-5 if field_name == "layerscale" else True
    return out, dataclasses.replace(spec, **changes)


def _load_folder(folder: Path) -> tuple[dict[str, torch.Tensor], BackboneSpec]:
    """A timm or transformers hub folder: its record when dinolite wrote it, else its own config."""
    kind, config = read_folder_config(folder)
    weights_path = folder_weights(folder)
    tensors = (
        _read_pth(weights_path) if weights_path.name == PICKLE_WEIGHTS_NAME else _read_safetensors(weights_path)[0]
    )
    origin = str(weights_path)
    if kind == "timm":
        state_dict = _converted(from_timm_state_dict, tensors, origin, "timm")
    else:
        state_dict = _converted(from_transformers_state_dict, tensors, origin, "transformers")
    record = config.get("dinolite_backbone")
    if record is not None:
        record_origin = f"{folder / CONFIG_NAME} (dinolite_backbone)"
        spec = BackboneSpec.from_mapping(record, origin=record_origin)
        if kind == "transformers":
            state_dict, spec = _drop_neutral_extras(state_dict, spec)
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        check_spec_against_shapes(spec, shapes, spec_origin=record_origin, weights_origin=origin)
        return state_dict, spec
    overrides = folder_spec_overrides(kind, config, folder)
    spec = spec_from_state_dict(state_dict, origin=origin, num_heads=overrides.pop("num_heads", None))
    spec = dataclasses.replace(spec, source=kind, **overrides)
    check_spec(spec, f"{folder / CONFIG_NAME} with {weights_path.name}")
    return state_dict, spec


def load_backbone_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], BackboneSpec]:
    """Read an exported, DINOv2, timm or transformers backbone (file, hub folder, or ``hf-hub:ORG/NAME``):
    ``(state_dict in DINOv2 layout, architecture)``."""
    if is_hub_source(path):
        path = download_hub_source(str(path))
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    state_dict, spec = _load_file(path)
    check_spec(spec, str(path))
    return state_dict, spec


def check_spec(spec: BackboneSpec, origin: str) -> None:
    """Every record field in type and range, and the head count dividing the width (a model with
    another split cannot be built)."""
    check_spec_fields(spec, origin)
    if spec.embed_dim % spec.num_heads:
        raise ExportFormatError(f"{origin}: num_heads={spec.num_heads} does not divide embed_dim={spec.embed_dim}")


def _load_file(path: Path) -> tuple[dict[str, torch.Tensor], BackboneSpec]:
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    if path.suffix == ".safetensors":
        # The record is checked against the header's shapes before any tensor is read or model built.
        shapes, metadata = _read_safetensors_header(path)
        sidecars = [f for f in (spec_path_for(path), legacy_spec_path_for(path)) if f.is_file()]
        spec: Optional[BackboneSpec] = None
        if SPEC_METADATA_KEY in metadata:  # the header travels with the weights: it wins over any sidecar
            origin = f"{path} (header metadata {SPEC_METADATA_KEY!r})"
            try:
                record = json.loads(metadata[SPEC_METADATA_KEY])
            except ValueError as exc:
                raise ExportFormatError(f"{origin}: not valid JSON: {exc}") from exc
            spec = BackboneSpec.from_mapping(record, origin=origin)
        elif sidecars:
            origin = str(sidecars[0])
            spec = BackboneSpec.from_json_file(sidecars[0])
        if spec is not None:
            check_spec_against_shapes(spec, shapes, spec_origin=origin, weights_origin=str(path))
        state_dict, _ = _read_safetensors(path)
        if spec is None:
            resampling = layout_resampling(state_dict)
            state_dict = to_dinov2_layout(state_dict, origin=str(path))
            spec = dataclasses.replace(spec_from_state_dict(state_dict, origin=str(path)), **resampling)
    elif path.suffix in (".pth", ".pt", ".bin"):
        raw = _read_pth(path)
        resampling = layout_resampling(raw)
        state_dict = to_dinov2_layout(raw, origin=str(path))
        spec = dataclasses.replace(spec_from_state_dict(state_dict, origin=str(path)), **resampling)
    else:
        raise ExportFormatError(
            f"{path}: unknown backbone file type {path.suffix!r}; expected .safetensors, .pth, a hub folder "
            f"({CONFIG_NAME} + {WEIGHTS_NAME}) or hf-hub:ORG/NAME"
        )
    return state_dict, spec


def build_from_spec(spec: BackboneSpec, device: str | torch.device | None = None) -> nn.Module:
    """The backbone ``spec`` describes (``device="meta"``: shapes only, nothing allocated)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return DinoVisionTransformer(**spec.backbone_kwargs())


def check_state_dict_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Raise unless ``state_dict`` has exactly ``model``'s keys and shapes, naming every mismatch.

    Reads only shapes, so ``model`` may live on the ``meta`` device."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append("shape mismatch: " + "; ".join(wrong_shape[:10]) + (" ..." if len(wrong_shape) > 10 else ""))
        if missing:
            parts.append(f"missing keys: {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:10]}" + (" ..." if len(unexpected) > 10 else ""))
        raise ExportFormatError(f"{origin}: weights do not fit the architecture: " + " | ".join(parts))


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names every mismatching key and shape."""
    check_state_dict_fits(model, state_dict, origin)
    model.load_state_dict(state_dict, strict=True)


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported (or DINOv2 ``.pth``) backbone, frozen and in eval mode.

    The returned module has ``.spec`` (:class:`BackboneSpec`: architecture, training image size,
    normalisation mean/std, iteration) for building matching eval transforms.
    """
    state_dict, spec = load_backbone_state_dict(path)
    # Every key and shape is compared on a model without storage first: a record that passed the
    # headline checks but still disagrees (e.g. mlp_ratio) is refused before anything is allocated.
    check_state_dict_fits(build_from_spec(spec, device="meta"), state_dict, origin=str(path))
    model = build_from_spec(spec)
    load_state_dict_strict(model, state_dict, origin=str(path))
    model.spec = spec
    model.requires_grad_(False)
    return model.eval().to(map_location)


def load_pretrained(path: str | Path) -> PretrainedWeights:
    """Weights to start training from (``student.pretrained_weights``): backbone, plus heads if exported."""
    state_dict, spec = load_backbone_state_dict(path)
    heads = None
    heads_file = heads_path_for(path)
    if not is_hub_source(path) and Path(path).suffix == ".safetensors" and heads_file.is_file():
        heads, _ = _read_safetensors(heads_file)
    return PretrainedWeights(spec=spec, backbone=state_dict, heads=heads)
