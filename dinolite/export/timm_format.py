"""Conversion to the state-dict layout of timm's DINOv2 ViTs (``vit_*_patch14_dinov2``, ``*_reg4_dinov2``).

timm's layout equals DINOv2's except for three points:
- SwiGLU FFNs are ``mlp.fc1`` (the packed ``w12``) and ``mlp.fc2`` (``w3``);
- register models use ``reg_token`` and timm's ``no_embed_class`` mode: the position embedding covers
  patches only, so the CLS position embedding is folded into ``cls_token``;
- there is no ``mask_token`` (a training-only parameter).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dinolite.export.spec import BackboneSpec
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


def timm_model_args(spec: BackboneSpec) -> tuple[str, dict[str, Any]]:
    """``(model name, kwargs)`` for ``timm.create_model`` that builds the architecture of ``spec``.

    For DINOv2 sizes this is the matching registered name; otherwise the generic ``vit_base_patch16_224``
    entry with every architectural argument overridden.
    """
    registered = _TIMM_SIZE.get(spec.arch)
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
        from timm.layers import SwiGLUPacked  # timm is optional: only SwiGLU exports need its class


        # timm's packed SwiGLU sizes fc1 as int(dim * mlp_ratio) = 2 x DINOv2's rounded hidden size;
        # the half-unit margin keeps float rounding from landing one short.
        hidden = swiglu_hidden_dim(int(spec.embed_dim * spec.mlp_ratio))
        kwargs.update(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=(2 * hidden + 0.5) / spec.embed_dim)
    return name, kwargs
