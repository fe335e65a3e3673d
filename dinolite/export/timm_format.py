"""Conversion to the state-dict layout of timm's DINOv2 ViTs (``vit_*_patch14_dinov2``, ``*_reg4_dinov2``).

timm's layout equals DINOv2's except for three points:
- SwiGLU FFNs are ``mlp.fc1`` (the packed ``w12``) and ``mlp.fc2`` (``w3``);
- register models use ``reg_token`` and timm's ``no_embed_class`` mode: the position embedding covers
  patches only, so the CLS position embedding is folded into ``cls_token``;
- there is no ``mask_token`` (a training-only parameter).

:func:`from_timm_state_dict` goes back (timm's own DINOv2 weights load into dinolite), and
:func:`timm_hub_config` writes the ``config.json`` of a timm hub folder (``timm.create_model("local-dir:...")``
or ``"hf-hub:..."``), whose ``pretrained_cfg`` carries the real input size, interpolation and mean/std.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from dinolite.export.spec import BackboneSpec, ExportFormatError, require_absolute_position, require_cls_token
from dinolite.models import swiglu_hidden_dim

_TIMM_SIZE = {"vit_small": "small", "vit_base": "base", "vit_large": "large", "vit_giant2": "giant"}


def to_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    sd = dict(state_dict)
    sd.pop("mask_token", None)
    if "register_tokens" in sd:
        pos_embed = sd.pop("pos_embed")
        out["reg_token"] = sd.pop("register_tokens")
        out["cls_token"] = sd.pop("cls_token") + pos_embed[:, :1]
        out["pos_embed"] = pos_embed[:, 1:]
    for key, value in sd.items():
        out[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = value
    return {k: v.contiguous() for k, v in out.items()}


def timm_model_args(spec: BackboneSpec, layer_classes: bool = True) -> tuple[str, dict[str, Any]]:
    """``(model name, kwargs)`` for ``timm.create_model`` that builds the architecture of ``spec``.

    For DINOv2 sizes this is the matching registered name; otherwise the generic ``vit_base_patch16_224``
    entry with every architectural argument overridden. ``layer_classes=False`` leaves out the SwiGLU
    layer classes (for JSON; ``vit_giant_patch14_dinov2`` sets them itself) and needs no timm.
    """
    require_cls_token(spec, "timm")
    require_absolute_position(spec, "timm's DINOv2 layout")
    registered = _TIMM_SIZE.get(spec.arch)
    if spec.arch == "vit_giant2" and spec.ffn_layer == "mlp":
        registered = None  # timm's vit_giant_patch14_dinov2 entry sets SwiGLU; the generic entry does not
    reg = f"_reg{spec.num_register_tokens}" if spec.num_register_tokens else ""
    name = f"vit_{registered}_patch14{reg}_dinov2" if registered else "vit_base_patch16_224"
    kwargs: dict[str, Any] = dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        qkv_bias=spec.qkv_bias,
        init_values=spec.layerscale,
        num_classes=0,
        global_pool="token",
    )
    if spec.num_register_tokens:
        kwargs.update(reg_tokens=spec.num_register_tokens, no_embed_class=True)
    if spec.ffn_layer == "swiglu":
        # timm's packed SwiGLU sizes fc1 as int(dim * mlp_ratio) = 2 x DINOv2's rounded hidden size;
        # the half-unit margin keeps float rounding from landing one short.
        hidden = swiglu_hidden_dim(int(spec.embed_dim * spec.mlp_ratio))
        kwargs.update(mlp_ratio=(2 * hidden + 0.5) / spec.embed_dim)
        if layer_classes:
            # timm is optional: only SwiGLU exports need its class
            from timm.layers import SwiGLUPacked

            kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    return name, kwargs


def is_timm_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for timm's key layout (``reg_token``, packed SwiGLU ``mlp.fc1``, patch-only ``pos_embed``)."""
    if "reg_token" in state_dict:
        return True
    fc1, fc2 = state_dict.get("blocks.0.mlp.fc1.weight"), state_dict.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.ndim == fc2.ndim == 2 and fc1.shape[0] != fc2.shape[1]:
        return True  # SwiGLUPacked: fc1 holds both halves
    pos = state_dict.get("pos_embed")
    # no_embed_class: patches only beside a cls_token (a malformed pos_embed is left for the shape checks to
    # name); a patch-only table without a cls_token is a CLS-free backbone in DINOv2's own layout
    square = pos is not None and pos.ndim == 3 and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]
    return square and "cls_token" in state_dict


def from_timm_state_dict(state_dict: Mapping[str, torch.Tensor], origin: str = "state dict") -> dict[str, torch.Tensor]:
    """timm's DINOv2 layout -> DINOv2's (the inverse of :func:`to_timm_state_dict`).

    With ``no_embed_class`` (timm's register models) the CLS position embedding is already inside
    ``cls_token``; a zero CLS entry in front of the patch position embeddings gives the same sum.
    ``mask_token`` is absent from timm (it is used in training only) and starts at zero, DINOv2's init.
    """
    sd = dict(state_dict)
    unexpected = sorted(k for k in sd if k.startswith(("head.", "fc_norm.", "norm_pre.", "attn_pool.")))
    if unexpected:
        raise ExportFormatError(
            f"{origin}: timm weights with a classifier or pooling head ({unexpected[:4]}) are not a DINOv2 backbone; "
            "save the backbone with num_classes=0, global_pool='token'"
        )
    out: dict[str, torch.Tensor] = {}
    pos = sd.pop("pos_embed")
    if math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:  # no_embed_class: patches only
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    out["pos_embed"] = pos
    if "reg_token" in sd:
        out["register_tokens"] = sd.pop("reg_token")
    for key, value in sd.items():
        out[key] = value
    depth = 1 + max((int(k.split(".")[1]) for k in out if k.startswith("blocks.")), default=-1)
    for i in range(depth):
        fc1, fc2 = f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"
        if out[f"{fc1}.weight"].shape[0] != out[f"{fc2}.weight"].shape[1]:  # packed SwiGLU
            for old, new in ((fc1, f"blocks.{i}.mlp.w12"), (fc2, f"blocks.{i}.mlp.w3")):
                for part in ("weight", "bias"):
                    if f"{old}.{part}" in out:
                        out[f"{new}.{part}"] = out.pop(f"{old}.{part}")
    out.setdefault("mask_token", torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype))
    return out


# timm's pretrained_cfg for our eval protocol: resize the shorter side to crop * 256/224, center crop.
EVAL_CROP_PCT = 224 / 256


def timm_hub_config(spec: BackboneSpec) -> dict[str, Any]:
    """``config.json`` of a timm hub folder: architecture, JSON model arguments, and a ``pretrained_cfg``
    whose input size, interpolation and mean/std are the ones the backbone was trained with, so that
    ``timm.data.resolve_data_config(model=m)`` builds dinolite's eval transform.

    timm's config cannot name a layer class, so SwiGLU is only expressible where timm registers it
    (ViT-g/14, ``vit_giant_patch14_dinov2``).
    """
    if spec.ffn_layer == "swiglu" and spec.arch != "vit_giant2":
        raise ExportFormatError(
            f"a timm hub folder cannot describe a {spec.arch} with SwiGLU FFNs: timm registers SwiGLU DINOv2 "
            "models for ViT-g/14 only and config.json cannot name the layer class; use --format timm "
            "(weights + the timm.create_model call in JSON) or --format transformers"
        )
    name, kwargs = timm_model_args(spec, layer_classes=False)
    size = int(spec.train_img_size or spec.img_size)
    if size != spec.img_size:
        kwargs["dynamic_img_size"] = True  # evaluated at the training crop, position grid of img_size
    return {
        "architecture": name,
        "num_classes": 0,
        "num_features": spec.embed_dim,
        "global_pool": "token",
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": size == spec.img_size,
            "interpolation": "bicubic",
            "crop_pct": EVAL_CROP_PCT,
            "crop_mode": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "dinolite_backbone": json.loads(spec.to_json()),  # the exact record, for loading it back
    }
