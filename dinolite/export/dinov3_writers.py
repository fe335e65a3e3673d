"""Files of a RoPE backbone (``student.pos_embed=rope``) in DINOv3's layouts, for ``dinolite-export``:

- ``--format dinov2`` (``.pth``): DINOv3's own key layout (:mod:`dinolite.export.dinov3_format`), what its hub
  entries and ``DinoVisionTransformer.load_state_dict`` read;
- ``--format timm``: timm's DINOv3 ``Eva`` keys (safetensors / ``.pth``) and a JSON naming the
  ``timm.create_model`` call (:mod:`dinolite.export.dinov3_hf_format`);
- ``--format transformers``: a ``DINOv3ViTModel`` folder (``config.json``, ``model.safetensors``,
  ``preprocessor_config.json``) for ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from dinolite.checkpoint.tensor_files import save_tensor_file
from dinolite.export.dinov3_format import to_dinov3_state_dict
from dinolite.export.dinov3_hf_format import (
    rope_base_of,
    timm_dinov3_model_args,
    to_timm_dinov3_state_dict,
    to_transformers_dinov3_config,
    to_transformers_dinov3_state_dict,
)
from dinolite.export.load import spec_path_for
from dinolite.export.spec import BackboneSpec, ExportFormatError
from dinolite.export.transformers_format import preprocessor_config
from dinolite.io import write_atomic

ROPE_FORMATS = ("dinov2", "timm", "transformers")


def _plain(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    return write_atomic(path, lambda tmp: save_tensor_file(tensors, tmp))


def write_rope_backbone(
    fmt: str, state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, output: str | Path
) -> list[Path]:
    """Write ``fmt`` (one of :data:`ROPE_FORMATS`) for a ``position=rope`` backbone; conversions (and their
    refusals) come before anything is written."""
    output = Path(output)
    if fmt == "dinov2":
        return [_write_tensors(_plain(to_dinov3_state_dict(state_dict, spec)), output)]
    if fmt == "timm":
        tensors = _plain(to_timm_dinov3_state_dict(state_dict, spec))
        name, kwargs = timm_dinov3_model_args(spec, rope_base_of(state_dict, spec, "timm"))
        kwargs.pop("norm_layer", None)
        record = {
            "timm_model": name,
            "timm_kwargs": kwargs,
            "norm_eps": spec.layernorm_eps,  # timm's DINOv3 entries: 1e-5; else norm_layer=LayerNorm(eps)
            "dinolite": json.loads(spec.to_json()),
        }
        written = [_write_tensors(tensors, output)]
        text = json.dumps(record, indent=2) + "\n"
        written.append(write_atomic(spec_path_for(output), lambda tmp: tmp.write_text(text)))
        return written
    if fmt == "transformers":
        tensors = _plain(to_transformers_dinov3_state_dict(state_dict, spec))
        config = {"model_type": "dinov3_vit", "architectures": ["DINOv3ViTModel"]}
        config.update(to_transformers_dinov3_config(spec, state_dict))
        output.mkdir(parents=True, exist_ok=True)
        written = [_write_tensors(tensors, output / "model.safetensors")]
        for name, data in (("preprocessor_config.json", preprocessor_config(spec)), ("config.json", config)):
            text = json.dumps(data, indent=2) + "\n"
            written.append(write_atomic(output / name, lambda tmp, text=text: tmp.write_text(text)))
        return written
    raise ExportFormatError(
        f"--format {fmt}: a RoPE backbone (DINOv3's ViT) exports as safetensors, onnx or DINOv3's layouts "
        f"({', '.join(ROPE_FORMATS)})"
    )
