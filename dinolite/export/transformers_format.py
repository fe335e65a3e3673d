"""The layout of HuggingFace transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` checkpoints.

What ``save_pretrained`` writes and ``from_pretrained`` reads (the names of ``facebook/dinov2-*`` on the
hub), mapped from DINOv2's layout:

| DINOv2 (ours)                     | transformers                                              |
|-----------------------------------|-----------------------------------------------------------|
| ``cls_token``, ``mask_token``     | ``embeddings.cls_token``, ``embeddings.mask_token``       |
| ``pos_embed``                     | ``embeddings.position_embeddings``                        |
| ``register_tokens``               | ``embeddings.register_tokens``                            |
| ``patch_embed.proj``              | ``embeddings.patch_embeddings.projection``                |
| ``blocks.i.attn.qkv`` (q; k; v)   | ``encoder.layer.i.attention.attention.{query,key,value}`` |
| ``blocks.i.attn.proj``            | ``encoder.layer.i.attention.output.dense``                |
| ``blocks.i.ls{1,2}.gamma``        | ``encoder.layer.i.layer_scale{1,2}.lambda1``              |
| ``blocks.i.mlp.{fc1,fc2}``        | ``encoder.layer.i.mlp.{fc1,fc2}``                         |
| ``blocks.i.mlp.{w12,w3}`` (SwiGLU)| ``encoder.layer.i.mlp.{weights_in,weights_out}``          |
| ``norm``                          | ``layernorm``                                             |

transformers always has LayerScale and biases on the attention output and the MLP: a backbone without
them is written with LayerScale 1 and zero biases (the same function). Features agree at the
checkpoint's own resolution; at other sizes each library resamples the position embeddings its own way.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import torch

from dinolite.export.spec import BackboneSpec, ExportFormatError, require_absolute_position, require_cls_token
from dinolite.export.timm_format import EVAL_CROP_PCT

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# per-block names: ours -> transformers (qkv is split, handled apart)
_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
}
_TOP_NAMES = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def is_transformers_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "embeddings.cls_token" in state_dict or "dinov2.embeddings.cls_token" in state_dict


def to_transformers_state_dict(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    require_cls_token(spec, "transformers")
    require_absolute_position(spec, "transformers' DINOv2 layout")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
            continue
        match = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if match is None:
            raise ExportFormatError(f"transformers layout: no place for {key!r}")
        i, name, part = match.groups()
        prefix = f"encoder.layer.{i}."
        if name == "attn.qkv":
            for piece, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}attention.attention.{piece}.{part}"] = chunk
        elif part == "gamma":
            out[prefix + _BLOCK_NAMES[f"{name}.gamma"]] = value
        else:
            out[f"{prefix}{_BLOCK_NAMES[name]}.{part}"] = value
    dim = spec.embed_dim
    for i in range(spec.depth):  # what transformers always has and this backbone may lack
        prefix = f"encoder.layer.{i}."
        for scale in ("layer_scale1.lambda1", "layer_scale2.lambda1"):
            out.setdefault(prefix + scale, torch.ones(dim))
        out.setdefault(prefix + "attention.output.dense.bias", torch.zeros(dim))
        if spec.ffn_layer == "swiglu":
            hidden = out[prefix + "mlp.weights_out.weight"].shape[1]
            out.setdefault(prefix + "mlp.weights_in.bias", torch.zeros(2 * hidden))
            out.setdefault(prefix + "mlp.weights_out.bias", torch.zeros(dim))
        else:
            out.setdefault(prefix + "mlp.fc1.bias", torch.zeros(out[prefix + "mlp.fc1.weight"].shape[0]))
            out.setdefault(prefix + "mlp.fc2.bias", torch.zeros(dim))
    return {k: v.contiguous() for k, v in out.items()}


def from_transformers_state_dict(
    state_dict: Mapping[str, torch.Tensor], origin: str = "state dict"
) -> dict[str, torch.Tensor]:
    """transformers' layout -> DINOv2's (a ``dinov2.`` prefix of task models is dropped, heads refused)."""
    sd = dict(state_dict)
    if any(k.startswith("dinov2.") for k in sd):
        heads = sorted(k for k in sd if not k.startswith("dinov2."))
        if heads:
            raise ExportFormatError(
                f"{origin}: a task model with head weights {heads[:4]}; pass the backbone (Dinov2Model)"
            )
        sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    top = {theirs: ours for ours, theirs in _TOP_NAMES.items()}
    block = {theirs: ours for ours, theirs in _BLOCK_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            raise ExportFormatError(f"{origin}: unexpected key {key!r} for a transformers Dinov2Model")
        i, rest = match.groups()
        attention = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if attention:
            qkv.setdefault((i, attention.group(2)), {})[attention.group(1)] = value
            continue
        name, _, part = rest.rpartition(".")
        if rest.endswith(".lambda1"):
            out[f"blocks.{i}.{block[rest]}"] = value
        elif name in block:
            out[f"blocks.{i}.{block[name]}.{part}"] = value
        else:
            raise ExportFormatError(f"{origin}: unexpected key {key!r} for a transformers Dinov2Model")
    for (i, part), pieces in qkv.items():
        out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([pieces["query"], pieces["key"], pieces["value"]], dim=0)
    return out


def transformers_config(spec: BackboneSpec) -> dict[str, Any]:
    """``config.json`` for ``Dinov2Model`` (or ``Dinov2WithRegistersModel`` with register tokens)."""
    require_cls_token(spec, "transformers")
    require_absolute_position(spec, "transformers' DINOv2 layout")
    registers = spec.num_register_tokens > 0
    config: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": spec.embed_dim,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.num_heads,
        # an int where it is one: transformers >= 5 validates the type
        "mlp_ratio": int(spec.mlp_ratio) if float(spec.mlp_ratio).is_integer() else spec.mlp_ratio,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": spec.img_size,
        "patch_size": spec.patch_size,
        "num_channels": 3,
        "qkv_bias": spec.qkv_bias,
        "layerscale_value": spec.layerscale if spec.layerscale is not None else 1.0,
        "use_swiglu_ffn": spec.ffn_layer == "swiglu",
        "drop_path_rate": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "dinolite_backbone": json.loads(spec.to_json()),  # the exact record, for loading it back
    }
    if registers:
        config["num_register_tokens"] = spec.num_register_tokens
    return config


def preprocessor_config(spec: BackboneSpec) -> dict[str, Any]:
    """``preprocessor_config.json`` (``BitImageProcessor``, as ``facebook/dinov2-*``): dinolite's eval
    transform (bicubic resize of the shorter side to crop * 256/224, center crop, the training mean/std)."""
    crop = int(spec.train_img_size or spec.img_size)
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(round(crop / EVAL_CROP_PCT))},
        "resample": 3,  # PIL bicubic
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
        "do_convert_rgb": True,
    }
