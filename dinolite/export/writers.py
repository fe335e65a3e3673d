"""Write a backbone in one of the export formats: safetensors (+JSON), dinov2 (.pth), timm, onnx, and
the HuggingFace folders (timm-hub, transformers; :mod:`dinolite.export.hub`).

Every file is written to a temporary name and renamed when complete, so an interrupted export never
leaves a truncated file under the final name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Mapping, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from dinolite.checkpoint.tensor_files import save_tensor_file
from dinolite.export.hub import FOLDER_FORMATS, folder_paths
from dinolite.export.load import SPEC_METADATA_KEY, heads_path_for, spec_path_for
from dinolite.export.onnx_pos_embed import make_exportable
from dinolite.export.spec import BackboneSpec, require_absolute_position, require_cls_token
from dinolite.export.timm_format import timm_model_args, to_timm_state_dict
from dinolite.extras import optional_import
from dinolite.io import write_atomic

FORMATS = ("safetensors", "dinov2", "timm", "onnx") + FOLDER_FORMATS
# File suffixes each format writes; the first is the one --format implies when the suffix is missing.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "safetensors": (".safetensors",),
    "dinov2": (".pth", ".pt"),
    "timm": (".safetensors", ".pth", ".bin"),
    "onnx": (".onnx",),
}
# The format a suffix means when --format is not given (.safetensors: dinolite's own layout).
SUFFIX_FORMAT = {".safetensors": "safetensors", ".pth": "dinov2", ".pt": "dinov2", ".onnx": "onnx"}
ONNX_METADATA_PREFIX = "dinolite."


def resolve_format(output: str | Path, fmt: Optional[str]) -> str:
    """The export format of ``output``: from its suffix, or ``fmt`` checked against the suffix.

    A mismatch is an error rather than a silently renamed file (``x.onnx`` must hold ONNX).
    """
    suffix = Path(output).suffix.lower()
    if fmt in FOLDER_FORMATS:
        if suffix:
            raise ValueError(f"--output {output}: --format {fmt} writes a folder; name it without a suffix")
        return fmt
    if fmt is None:
        if suffix not in SUFFIX_FORMAT:
            raise ValueError(
                f"--output {output}: cannot tell the format from the suffix {suffix or '(none)'!r}; use one of "
                f"{sorted(SUFFIX_FORMAT)} or pass --format {{{','.join(FORMATS)}}} (timm-hub and transformers "
                "write a folder)"
            )
        return SUFFIX_FORMAT[suffix]
    if fmt not in FORMAT_SUFFIXES:
        raise ValueError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    if suffix not in FORMAT_SUFFIXES[fmt]:
        raise ValueError(
            f"--output {output}: --format {fmt} writes {' or '.join(FORMAT_SUFFIXES[fmt])} files, not {suffix or 'no suffix'!r}"
        )
    return fmt


def output_paths(fmt: str, path: str | Path, with_heads: bool = False) -> list[Path]:
    """Every file an export of ``fmt`` to ``path`` writes (to refuse overwriting before writing any)."""
    if fmt in FOLDER_FORMATS:
        return folder_paths(fmt, path)
    path = Path(path)
    paths = [path]
    if fmt in ("safetensors", "timm", "onnx"):
        paths.append(spec_path_for(path))
    if fmt == "safetensors" and with_heads:
        paths.append(heads_path_for(path))
    return paths


def onnx_metadata(spec: BackboneSpec) -> dict[str, str]:
    """String key/values stored in the ONNX graph's ``metadata_props``: the full record under the same
    key as the safetensors header, and the figures a deployment needs (input size rule, normalisation)."""
    prefix = ONNX_METADATA_PREFIX
    return {
        SPEC_METADATA_KEY: spec.to_json(),
        f"{prefix}arch": spec.arch,
        f"{prefix}patch_size": str(spec.patch_size),
        f"{prefix}embed_dim": str(spec.embed_dim),
        f"{prefix}train_img_size": str(spec.train_img_size or spec.img_size),
        f"{prefix}mean": json.dumps(list(spec.mean)),
        f"{prefix}std": json.dumps(list(spec.std)),
        f"{prefix}input": (
            f"images: float32 (B, 3, H, W), RGB scaled to [0, 1] then normalised with mean/std; H and W "
            f"multiples of {spec.patch_size}"
        ),
        f"{prefix}outputs": (
            "cls: (B, D) normalised CLS token (a CLS-free backbone: the mean of patch_tokens); "
            "patch_tokens: (B, H/p * W/p, D) normalised patch tokens"
        ),
    }


def _plain(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; exports own their memory.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}


def write_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    spec: BackboneSpec,
    path: str | Path,
    heads: Optional[Mapping[str, torch.Tensor]] = None,
) -> list[Path]:
    """``path`` (.safetensors, spec in its header metadata) + ``path.json`` (``NAME.safetensors.json``, a
    readable copy); heads to ``NAME.heads.safetensors``."""

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    metadata = {SPEC_METADATA_KEY: spec.to_json()}
    written = [write_atomic(path, lambda tmp: save_file(_plain(state_dict), str(tmp), metadata=metadata))]
    written.append(write_atomic(spec_path_for(path), lambda tmp: tmp.write_text(spec.to_json() + "\n")))
    if heads is not None:
        written.append(write_atomic(heads_path_for(path), lambda tmp: save_file(_plain(heads), str(tmp))))
    return written


def write_dinov2(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> list[Path]:
    """A plain ``.pth`` state dict in the layout of DINOv2's released ``*_pretrain.pth`` files."""
    path = Path(path)
    return [write_atomic(path, lambda tmp: save_tensor_file(_plain(state_dict), tmp))]


def write_timm(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, path: str | Path) -> list[Path]:
    """timm layout (safetensors or .pth by suffix) + a JSON naming the ``timm.create_model`` call."""

    require_cls_token(spec, "timm")  # before anything is written
    require_absolute_position(spec, "timm's DINOv2 layout")
    path = Path(path)
    converted = to_timm_state_dict(state_dict)
    if path.suffix == ".safetensors":
        written = [write_atomic(path, lambda tmp: save_file(_plain(converted), str(tmp)))]
    else:
        written = [write_atomic(path, lambda tmp: save_tensor_file(_plain(converted), tmp))]
    name, kwargs = timm_model_args(spec)
    # Layer classes are recorded by name (timm.layers.SwiGLUPacked, torch.nn.SiLU) to stay JSON.
    symbolic = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}
    kwargs = {k: (symbolic[k] if k in symbolic else v) for k, v in kwargs.items()}
    record = {"timm_model": name, "timm_kwargs": kwargs, "dinolite": json.loads(spec.to_json())}
    written.append(write_atomic(spec_path_for(path), lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n")))
    return written


def require_onnx() -> ModuleType:
    """The ``onnx`` package (the ``onnx`` extra), or :class:`MissingExtraError` naming the pip line: asked
    before exporting, since torch's exporter needs it too and otherwise fails with its own traceback."""
    return optional_import("onnx", extra="onnx", purpose="ONNX export (dinolite-export --format onnx)")


def _add_onnx_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    onnx = require_onnx()
    graph = onnx.load(str(path))
    existing = {prop.key: prop for prop in graph.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or graph.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(graph, str(path))


class _FeaturesForOnnx(nn.Module):
    """Backbone wrapper with tensor outputs: (normalised CLS, normalised patch tokens)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_features(images)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]


def write_onnx(
    backbone: nn.Module, spec: BackboneSpec, path: str | Path, opset: int = 18, exporter: str = "torchscript"
) -> list[Path]:
    """ONNX graph with dynamic batch and image size (multiples of the patch size), and ``NAME.onnx.json``.

    Inputs ``images (B,3,H,W)``; outputs ``cls (B,D)`` and ``patch_tokens (B,H/p*W/p,D)``. The graph
    refuses at run time an H or W that is not a multiple of the patch (see
    :func:`~dinolite.export.onnx_pos_embed.patchify_embed`) and carries :func:`onnx_metadata` in its
    ``metadata_props``.
    ``exporter``: ``"torchscript"`` (fast, every torch >= 2.6) or ``"dynamo"`` (torch.export based,
    needs onnxscript). The position-embedding resampling is swapped for a branch-free tensor version
    (:mod:`dinolite.export.onnx_pos_embed`) so that the graph stays valid at every image size.
    """

    if spec.position != "rope":  # RoPE's angles are computed from the image size in the graph (onnx_pos_embed)
        require_absolute_position(spec, "ONNX export")  # before anything is written
    require_onnx()
    path = Path(path)
    model = _FeaturesForOnnx(make_exportable(copy.deepcopy(backbone))).eval()
    size = spec.train_img_size or spec.img_size
    example = torch.randn(2, 3, size, size)

    names = dict(input_names=["images"], output_names=["cls", "patch_tokens"])

    def _export(tmp: Path) -> None:
        with torch.no_grad():
            if exporter == "dynamo":
                patch = spec.patch_size
                batch = torch.export.Dim("batch", min=1, max=4096)
                rows, cols = torch.export.Dim("rows", min=1, max=1024), torch.export.Dim("cols", min=1, max=1024)
                torch.onnx.export(
                    model, (example,), str(tmp), **names, dynamo=True, opset_version=opset,
                    dynamic_shapes={"images": {0: batch, 2: patch * rows, 3: patch * cols}},
                )  # fmt: skip
            else:
                dynamic_axes = {
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "cls": {0: "batch"},
                    "patch_tokens": {0: "batch", 1: "tokens"},
                }
                torch.onnx.export(
                    model, (example,), str(tmp), **names, dynamo=False, opset_version=opset, dynamic_axes=dynamic_axes
                )
        _add_onnx_metadata(tmp, onnx_metadata(spec))

    written = [write_atomic(path, _export)]
    written.append(write_atomic(spec_path_for(path), lambda tmp: tmp.write_text(spec.to_json() + "\n")))
    return written
