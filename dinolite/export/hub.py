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

from dinolite.export.spec import BackboneSpec, ExportFormatError
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
    folder.mkdir(parents=True, exist_ok=True)
    weights = _plain(to_transformers_state_dict(state_dict, spec))
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


def read_folder_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """``("timm" | "transformers", config)`` of a hub folder, from its ``config.json``."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: a backbone folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{config_path}: not valid JSON: {exc}") from exc
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} (only safetensors weights are read from folders)")
    if "architecture" in config:
        return "timm", config
    if config.get("model_type") in ("dinov2", "dinov2_with_registers"):
        return "transformers", config
    raise ExportFormatError(
        f"{config_path}: neither a timm config (no 'architecture') nor a transformers DINOv2 config "
        f"(model_type={config.get('model_type')!r})"
    )


def folder_spec_overrides(kind: str, config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """What a foreign folder says beyond the tensor shapes: heads, input size, mean/std."""
    if kind == "timm":
        pretrained = config.get("pretrained_cfg", {})
        args = config.get("model_args", {})
        out: dict[str, Any] = {}
        if "num_heads" in args:
            out["num_heads"] = int(args["num_heads"])
        if "input_size" in pretrained:
            out["train_img_size"] = int(pretrained["input_size"][-1])
        for key in ("mean", "std"):
            if key in pretrained:
                out[key] = tuple(float(v) for v in pretrained[key])
        if "init_values" in args and args["init_values"] is None:
            out["layerscale"] = None
        return out
    out = {"num_heads": int(config["num_attention_heads"])}
    processor_path = folder / PREPROCESSOR_NAME
    if processor_path.is_file():
        processor = json.loads(processor_path.read_text())
        crop = processor.get("crop_size", {})
        if "height" in crop:
            out["train_img_size"] = int(crop["height"])
        for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
            if theirs in processor:
                out[ours] = tuple(float(v) for v in processor[theirs])
    return out
