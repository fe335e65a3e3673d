"""Backbone folders in the layouts of the HuggingFace Hub, and the hub itself.

- ``timm`` folder: ``config.json`` (architecture, model arguments, ``pretrained_cfg`` with the real
  input size, interpolation and mean/std) + ``model.safetensors`` in timm's layout. Loads with
  ``timm.create_model("local-dir:DIR")`` or, once pushed, ``"hf-hub:ORG/NAME"``.
- ``transformers`` folder: ``config.json`` + ``model.safetensors`` of a ``Dinov2Model`` (or
  ``Dinov2WithRegistersModel``) and ``preprocessor_config.json``. Loads with ``from_pretrained(DIR)``.

Both carry dinolite's backbone record (``dinolite_backbone`` in ``config.json``), so dinolite loads them
back exactly; folders from timm or transformers without it are read from their own configs.
``hf-hub:ORG/NAME[@REVISION]`` sources are fetched with huggingface_hub (the ``hub`` extra), which also
honours ``HF_HUB_OFFLINE=1`` and its local cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import save_file

from dinolite.export.spec import BackboneSpec, ExportFormatError, read_json_file
from dinolite.export.spec_checks import MAX_IMAGE_SIDE, check_value, integer, json_object, triple
from dinolite.export.timm_format import timm_hub_config, to_timm_state_dict
from dinolite.export.transformers_format import (
    preprocessor_config,
    to_transformers_state_dict,
    transformers_config,
)
from dinolite.extras import optional_import
from dinolite.io import write_atomic

HF_HUB_PREFIX = "hf-hub:"
WEIGHTS_NAME = "model.safetensors"
# what older timm/transformers folders hold instead; read with torch.load(weights_only=True) and the
# storage checks of dinolite.checkpoint.tensor_files, only when there is no model.safetensors
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
FOLDER_FORMATS = ("timm-hub", "transformers")
# what a download fetches (no pickles: a repository's .bin / .pth files are never read)
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME)


def _plain(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}


def _write_json(path: Path, data: Mapping[str, Any]) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def folder_paths(fmt: str, folder: str | Path) -> list[Path]:
    """The files a folder export writes (to refuse overwriting before writing any)."""
    folder = Path(folder)
    names = [CONFIG_NAME, WEIGHTS_NAME] + ([PREPROCESSOR_NAME] if fmt == "transformers" else [])
    return [folder / name for name in names]


def write_timm_hub_folder(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, folder: str | Path) -> list[Path]:
    """``folder/config.json`` + ``folder/model.safetensors`` (timm layout); weights first, config last."""
    folder = Path(folder)
    config = timm_hub_config(spec)  # refuses what timm's config cannot express, before writing
    folder.mkdir(parents=True, exist_ok=True)
    weights = _plain(to_timm_state_dict(state_dict))
    written = [write_atomic(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))]
    written.append(_write_json(folder / CONFIG_NAME, config))
    return written


def write_transformers_folder(
    state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, folder: str | Path
) -> list[Path]:
    """A ``Dinov2Model`` folder: ``model.safetensors``, ``config.json``, ``preprocessor_config.json``."""
    folder = Path(folder)
    weights = _plain(to_transformers_state_dict(state_dict, spec))  # refuses what it cannot express first
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_atomic(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))]
    written.append(_write_json(folder / PREPROCESSOR_NAME, preprocessor_config(spec)))
    written.append(_write_json(folder / CONFIG_NAME, transformers_config(spec)))
    return written


def _huggingface_hub():
    return optional_import(
        "huggingface_hub", extra="hub", purpose="the Hugging Face Hub (hf-hub: sources, --push-to-hub)"
    )


def push_folder_to_hub(
    folder: str | Path, repo_id: str, private: bool = False, commit_message: Optional[str] = None
) -> str:
    """Create ``repo_id`` (a model repository) if needed and upload ``folder``; returns the commit URL.

    Credentials come from huggingface_hub (``HF_TOKEN`` or ``huggingface-cli login``).
    """
    hub = _huggingface_hub()
    api = hub.HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message or "Upload a dinolite backbone",
    )
    return str(getattr(info, "commit_url", info))


def is_hub_source(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(HF_HUB_PREFIX)


def download_hub_source(source: str) -> Path:
    """``hf-hub:ORG/NAME[@REVISION]`` -> the local snapshot folder (config + safetensors weights only)."""
    repo = source[len(HF_HUB_PREFIX) :]
    repo_id, _, revision = repo.partition("@")
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"{source!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    hub = _huggingface_hub()
    try:
        folder = hub.snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=list(HUB_FILES))
    except Exception as exc:  # offline without a cached copy, unknown repository, network errors
        raise FileNotFoundError(f"{source}: cannot fetch from the Hugging Face Hub: {exc}") from exc
    return Path(folder)


def is_backbone_folder(folder: Path) -> bool:
    """A folder in a hub layout: ``config.json`` and its weights (safetensors, or the older pickle)."""
    return (folder / CONFIG_NAME).is_file() and any((folder / n).is_file() for n in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME))


def folder_weights(folder: Path) -> Path:
    """``model.safetensors`` of a hub folder, else ``pytorch_model.bin``; an error naming both otherwise."""
    for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder}: holds {CONFIG_NAME} but no weights ({WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME}); hf-hub: sources "
        f"fetch only {WEIGHTS_NAME}: for a repository with pickled weights only, download it and pass the folder"
    )


def read_folder_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """``("timm" | "transformers", config)`` of a hub folder, from its ``config.json``."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder}: a backbone folder needs {CONFIG_NAME} and {WEIGHTS_NAME} (or {PICKLE_WEIGHTS_NAME})"
        )
    config = read_json_file(config_path)
    if not isinstance(config, dict):
        raise ExportFormatError(f"{config_path}: holds a JSON {type(config).__name__}, not an object")
    folder_weights(folder)
    if "architecture" in config:
        return "timm", config
    if config.get("model_type") in ("dinov2", "dinov2_with_registers"):
        return "transformers", config
    raise ExportFormatError(
        f"{config_path}: neither a timm config (no 'architecture') nor a transformers DINOv2 config "
        f"(model_type={config.get('model_type')!r})"
    )


# How each library resamples the position embeddings for another image size, so that the loaded model
# equals theirs at every size: timm's resample_abs_pos_embed (bicubic to the new grid, antialiased) and
# transformers' interpolate_pos_encoding (bicubic to the new grid; antialiased in Dinov2WithRegisters,
# not in Dinov2); none adds DINOv2's 0.1 offset.
TIMM_RESAMPLING = {"interpolate_offset": 0.0, "interpolate_antialias": True}


def transformers_resampling(registers: bool) -> dict[str, Any]:
    """transformers' resampling: ``Dinov2WithRegistersModel`` antialiases, ``Dinov2Model`` does not."""
    return {"interpolate_offset": 0.0, "interpolate_antialias": registers}


def folder_spec_overrides(kind: str, config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """What a foreign folder says beyond the tensor shapes: heads, input size, mean/std; every value
    type- and range-checked, an error naming the file and the key."""
    return _timm_overrides(config, folder / CONFIG_NAME) if kind == "timm" else _transformers_overrides(config, folder)


def _timm_overrides(config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    pretrained = check_value(config.get("pretrained_cfg", {}), json_object, f"{path}: pretrained_cfg")
    args = check_value(config.get("model_args", {}), json_object, f"{path}: model_args")
    out: dict[str, Any] = {}
    if "num_heads" in args:
        out["num_heads"] = check_value(args["num_heads"], integer(1), f"{path}: model_args.num_heads")
    if "input_size" in pretrained:
        where = f"{path}: pretrained_cfg.input_size"
        size = pretrained["input_size"]
        if not isinstance(size, list) or len(size) != 3:
            raise ExportFormatError(f"{where}={size!r} is not valid: expected [channels, height, width]")
        out["train_img_size"] = check_value(size[-1], integer(1, MAX_IMAGE_SIDE), where)
    for key, positive in (("mean", False), ("std", True)):
        if key in pretrained:
            out[key] = check_value(pretrained[key], triple(positive), f"{path}: pretrained_cfg.{key}")
    if "init_values" in args and args["init_values"] is None:
        out["layerscale"] = None
    return {**out, **TIMM_RESAMPLING}


def _transformers_overrides(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if "num_attention_heads" not in config:
        raise ExportFormatError(f"{path}: no num_attention_heads (a transformers DINOv2 config always has it)")
    out = {"num_heads": check_value(config["num_attention_heads"], integer(1), f"{path}: num_attention_heads")}
    processor_path = folder / PREPROCESSOR_NAME
    if processor_path.is_file():
        processor = check_value(read_json_file(processor_path), json_object, str(processor_path))
        crop = check_value(processor.get("crop_size", {}), json_object, f"{processor_path}: crop_size")
        if "height" in crop:
            where = f"{processor_path}: crop_size.height"
            out["train_img_size"] = check_value(crop["height"], integer(1, MAX_IMAGE_SIDE), where)
        for ours, theirs, positive in (("mean", "image_mean", False), ("std", "image_std", True)):
            if theirs in processor:
                out[ours] = check_value(processor[theirs], triple(positive), f"{processor_path}: {theirs}")
    return {**out, **transformers_resampling(config.get("model_type") == "dinov2_with_registers")}
