"""The key layouts of DINOv3's ViT in timm (1.0.31: ``Eva`` with ``rope_type="dinov3"``, ``vit_*_patch16_dinov3``)
and transformers (5.x: ``DINOv3ViTModel``), to and from dinolite's ``pos_embed=rope`` backbone.

Both compute DINOv3's function: axial RoPE with periods ``base ** (4k / head_dim)`` (timm: ``rope_temperature``;
transformers: ``rope_theta``), patch centres normalised per axis (DINOv3's ``normalize_coords="separate"``),
registers after CLS and unrotated. Neither stores the periods (they are rebuilt from the base), so a backbone
with ``min_period`` / ``max_period`` or another coordinate normalisation is refused. Differences in keys:

| dinolite                     | timm ``Eva``                         | transformers ``DINOv3ViTModel``                         |
|------------------------------|--------------------------------------|---------------------------------------------------------|
| ``cls_token``                | ``cls_token``                        | ``embeddings.cls_token``                                |
| ``register_tokens``          | ``reg_token``                        | ``embeddings.register_tokens``                          |
| ``mask_token (1, D)``        | (none)                               | ``embeddings.mask_token (1, 1, D)``                     |
| ``patch_embed.proj.*``       | ``patch_embed.proj.*``               | ``embeddings.patch_embeddings.*``                       |
| ``blocks.N.attn.qkv.weight`` | ``blocks.N.attn.qkv.weight``         | ``model.layer.N.attention.{q,k,v}_proj.weight``         |
| ``blocks.N.attn.qkv.bias``   | ``attn.q_bias``, ``attn.v_bias``     | ``{q,v}_proj.bias`` (+ ``k_proj.bias``: ``key_bias``)   |
| ``blocks.N.attn.proj.*``     | ``blocks.N.attn.proj.*``             | ``attention.o_proj.*``                                  |
| ``blocks.N.ls{1,2}.gamma``   | ``blocks.N.gamma_{1,2}``             | ``layer_scale{1,2}.lambda1``                            |
| ``blocks.N.mlp.fc{1,2}.*``   | ``blocks.N.mlp.fc{1,2}.*``           | ``mlp.up_proj.*``, ``mlp.down_proj.*``                  |
| ``blocks.N.norm{1,2}.*``     | same                                 | ``model.layer.N.norm{1,2}.*``                           |

timm's model has no key bias: a non-zero one (trained without ``student.mask_k_bias``) is refused for timm;
transformers takes it with ``key_bias=True``. dinolite's ``pos_embed`` (zero) and ``rope_embed.periods`` are
rebuilt on import. Only MLP FFNs are mapped (the SwiGLU hidden sizes round differently).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, Mapping

import torch

from dinolite.export.spec import BackboneSpec, ExportFormatError
from dinolite.models import ARCHITECTURES
from dinolite.models.rope import rope_periods

_TIMM_SIZES = {384: "small", 768: "base", 1024: "large"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def rope_base_of(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec, layout: str) -> float:
    """The ``base`` whose periods are the backbone's ``rope_embed.periods`` (timm and transformers rebuild them)."""
    if spec.position != "rope" or not spec.cls_token or spec.ffn_layer != "mlp":
        raise ExportFormatError(
            f"{layout} holds DINOv3's ViT (RoPE, a CLS token, an MLP FFN); this backbone's record says "
            f"position={spec.position}, cls_token={spec.cls_token}, ffn_layer={spec.ffn_layer}"
        )
    if spec.rope_normalize_coords != "separate":
        raise ExportFormatError(
            f"{layout} normalises RoPE coordinates per axis only; this backbone uses {spec.rope_normalize_coords!r}"
        )
    periods = state_dict["rope_embed.periods"].double()
    head_dim = spec.embed_dim // spec.num_heads
    count = len(periods)  # the last period is base ** (4 (n - 1) / d): the least amplified rounding
    base = float(periods[-1] ** (head_dim / (4 * (count - 1)))) if count > 1 else 100.0
    if not torch.allclose(rope_periods(head_dim, base, None, None).double(), periods, rtol=1e-5):
        raise ExportFormatError(
            f"{layout} builds RoPE periods from a base; this backbone's periods are not base ** (4k / d)"
        )
    return float(f"{base:.6g}")


def _split_qkv(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return value.chunk(3, dim=0)


def to_timm_dinov3_state_dict(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    rope_base_of(state_dict, spec, "timm's DINOv3 ViT")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("pos_embed", "mask_token", "rope_embed.periods"):
            continue
        if key.endswith(".attn.qkv.bias"):
            q, k, v = _split_qkv(value)
            if k.any():
                raise ExportFormatError(
                    f"{key}: the keys' bias is not zero, and timm's DINOv3 ViT has none (train with "
                    "student.mask_k_bias=true, as DINOv3 does, or export to transformers, which has key_bias)"
                )
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q, v
            continue
        key = key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        out["reg_token" if key == "register_tokens" else key] = value
    return {k: v.contiguous() for k, v in out.items()}


def timm_dinov3_model_args(spec: BackboneSpec, base: float) -> tuple[str, dict[str, Any]]:
    """``(model name, kwargs)`` for ``timm.create_model`` (CLS pooling, DINOv3's; timm's default is the mean)."""
    size = _TIMM_SIZES.get(spec.embed_dim, "small")
    name = f"vit_{size}_patch16_dinov3{'_qkvb' if spec.qkv_bias else ''}"
    kwargs: dict[str, Any] = dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        qkv_bias=spec.qkv_bias,
        init_values=spec.layerscale,
        num_reg_tokens=spec.num_register_tokens,
        rope_temperature=base,
        num_classes=0,
        global_pool="token",
    )
    if spec.layernorm_eps != 1e-5:  # timm's entries: 1e-5; a callable, so set only when needed
        kwargs["norm_layer"] = partial(torch.nn.LayerNorm, eps=spec.layernorm_eps)
    return name, kwargs


def from_timm_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor], img_size: int, base: float = 100.0, num_heads: int | None = None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".attn.q_bias"):
            v_bias = state_dict[key.replace("q_bias", "v_bias")]
            out[key.replace("q_bias", "qkv.bias")] = torch.cat((value, torch.zeros_like(value), v_bias))
            continue
        if key.endswith(".attn.v_bias"):
            continue
        key = key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        out["register_tokens" if key == "reg_token" else key] = value
    return _with_rope_state(out, img_size, base, num_heads)


def _with_rope_state(
    out: dict[str, torch.Tensor], img_size: int, base: float, num_heads: int | None
) -> dict[str, torch.Tensor]:
    """dinolite's tensors the foreign layouts do not store: the zero ``pos_embed``, ``mask_token`` (zero when
    absent), ``rope_embed.periods``."""
    width = int(out["cls_token"].shape[-1])
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    heads = num_heads or {a["embed_dim"]: a["num_heads"] for a in ARCHITECTURES.values()}.get(width)
    if heads is None:
        raise ExportFormatError(f"width {width} is not a ViT-S/B/L size, so its heads are unknown: pass num_heads")
    out.setdefault("mask_token", torch.zeros(1, width))
    out["pos_embed"] = torch.zeros(1, 1 + (img_size // patch) ** 2, width)
    out["rope_embed.periods"] = rope_periods(width // heads, base, None, None)
    return out


_HF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.up_proj",
    "mlp.fc2": "mlp.down_proj",
}
_HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}


def _hf_block_key(rest: str) -> str:
    for ours, theirs in _HF_BLOCK.items():
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    raise ExportFormatError(f"blocks.N.{rest} has no place in transformers' DINOv3 ViT")


def to_transformers_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec
) -> dict[str, torch.Tensor]:
    rope_base_of(state_dict, spec, "transformers' DINOv3 ViT")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("pos_embed", "rope_embed.periods"):
            continue
        if key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, 1, -1)
            continue
        block = _BLOCK.match(key)
        if block is None:
            out[_HF_TOP[key]] = value
            continue
        prefix, rest = f"model.layer.{block.group(1)}.", block.group(2)
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(value)):
                if not (kind == "bias" and name == "k_proj" and not part.any()):
                    out[f"{prefix}attention.{name}.{kind}"] = part
            continue
        out[prefix + _hf_block_key(rest)] = value
    return {k: v.contiguous() for k, v in out.items()}


def to_transformers_dinov3_config(spec: BackboneSpec, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``DINOv3ViTConfig`` keyword arguments for ``spec``; no training-time coordinate augmentation (the export is
    for inference; set ``pos_embed_rescale`` etc. to fine-tune as DINOv3 trained)."""
    base = rope_base_of(state_dict, spec, "transformers' DINOv3 ViT")
    key_bias = any(k.endswith(".attn.qkv.bias") and bool(_split_qkv(v)[1].any()) for k, v in state_dict.items())
    return dict(
        hidden_size=spec.embed_dim,
        intermediate_size=int(round(spec.embed_dim * spec.mlp_ratio)),
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        patch_size=spec.patch_size,
        image_size=spec.img_size,
        layer_norm_eps=spec.layernorm_eps,
        rope_theta=base,
        query_bias=spec.qkv_bias,
        key_bias=key_bias,
        value_bias=spec.qkv_bias,
        proj_bias=spec.proj_bias,
        mlp_bias=spec.ffn_bias,
        layerscale_value=spec.layerscale if spec.layerscale is not None else 1.0,
        num_register_tokens=spec.num_register_tokens,
        use_gated_mlp=False,
        pos_embed_shift=None,
        pos_embed_jitter=None,
        pos_embed_rescale=None,
    )


def from_transformers_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor], img_size: int, base: float = 100.0, num_heads: int | None = None
) -> dict[str, torch.Tensor]:
    top = {theirs: ours for ours, theirs in _HF_TOP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "embeddings.mask_token":
            out["mask_token"] = value.reshape(1, -1)
        elif key in top:
            out[top[key]] = value
        elif match := re.match(r"^model\.layer\.(\d+)\.(.+)$", key):
            index, rest = match.groups()
            if proj := re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest):
                qkv.setdefault(f"blocks.{index}.attn.qkv.{proj.group(2)}", {})[proj.group(1)] = value
                continue
            ours = next(
                (o + rest[len(t) :] for o, t in _HF_BLOCK.items() if rest.startswith(t + ".") or rest == t), None
            )
            if ours is None:
                raise ExportFormatError(f"{key}: not a key of transformers' DINOv3 ViT that dinolite maps")
            out[f"blocks.{index}.{ours}"] = value
        else:
            raise ExportFormatError(f"{key}: not a key of transformers' DINOv3 ViT that dinolite maps")
    for key, parts in qkv.items():
        if "k" not in parts:  # key_bias=False: no key bias
            parts["k"] = torch.zeros_like(parts["q"])
        out[key] = torch.cat((parts["q"], parts["k"], parts["v"]))
    return _with_rope_state(out, img_size, base, num_heads)


def is_timm_dinov3_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """timm's Eva keys with RoPE: blocks and a CLS token, no position table, no stored periods."""
    keys = ("cls_token", "blocks.0.attn.qkv.weight")
    return (
        all(k in state_dict for k in keys) and "pos_embed" not in state_dict and "rope_embed.periods" not in state_dict
    )


def is_transformers_dinov3_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """transformers' DINOv3 ViT keys (its DINOv2 model has ``embeddings.patch_embeddings.projection``)."""
    return "embeddings.patch_embeddings.weight" in state_dict and any(".attention.o_proj." in k for k in state_dict)
