"""DINOv3's backbone layout (facebookresearch/dinov3 ``6876159``, ``dinov3/models/vision_transformer.py``: the
``.pth`` files its hub entries load, and what its training saves as ``teacher.backbone``).

DINOv3's ViT and dinolite's ``pos_embed=rope`` backbone compute the same function; the state dicts differ in:

- ``storage_tokens (1, R, D)`` is dinolite's ``register_tokens`` (both sit after CLS, neither is rotated);
- there is no ``pos_embed``: dinolite keeps a zero, frozen table that only records the trained grid, rebuilt
  here for ``img_size`` (DINOv3's hub backbones: 224);
- ``mask_k_bias``: DINOv3 multiplies the ``qkv`` bias by the buffer ``attn.qkv.bias_mask`` (ones, zeros over the
  keys' third): the import folds the mask into the bias (with RoPE a key bias is not softmax-invariant, so it
  matters); the export writes an all-ones mask, which loads into a ``mask_k_bias=True`` model and keeps the bias;
- a SwiGLU FFN is ``w1`` / ``w2`` / ``w3`` (dinolite: ``w12`` packs ``w1`` over ``w2``);
- ``local_cls_norm.*`` (``untie_global_and_local_cls_norm``, used on local crops in training only) is dropped;
  ``cls_norm.*`` (``untie_cls_and_patch_norms``: another norm for CLS and storage tokens) is refused.

The rest (``cls_token``, ``mask_token (1, D)``, ``rope_embed.periods``, ``patch_embed.proj.*``, ``blocks.N.*``
with ``ls1.gamma`` / ``ls2.gamma``, ``norm.*``) is shared key for key. DINOv3's released ViTs use LayerNorm eps
1e-5 (``norm_layer="layernormbf16"``), which the import records (``layernorm_eps``).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from dinolite.export.spec import BackboneSpec, ExportFormatError

# hubconf.py's ViT entries (dinov3/hub/backbones.py), each with its architecture
DINOV3_HUB_VITS = {
    "dinov3_vits16": "vit_small, 4 storage tokens, MLP",
    "dinov3_vits16plus": "384 wide, SwiGLU ratio 6",
    "dinov3_vitb16": "vit_base, 4 storage tokens, MLP",
    "dinov3_vitl16": "vit_large, 4 storage tokens, MLP",
    "dinov3_vitl16plus": "1024 wide, SwiGLU",
    "dinov3_vith16plus": "1280 wide, 32 deep, SwiGLU aligned to 64",
    "dinov3_vit7b16": "4096 wide, 40 deep, SwiGLU aligned to 64",
}
DINOV3_LAYERNORM_EPS = 1.0e-5  # norm_layer="layernormbf16" in every hub entry
_BIAS_MASK = re.compile(r"^(blocks\.\d+\.attn\.qkv)\.bias_mask$")
_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp)\.w([12])\.(weight|bias)$")


def is_dinov3_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for DINOv3's keys: RoPE periods and no position table."""
    return "rope_embed.periods" in state_dict and "pos_embed" not in state_dict


def from_dinov3_state_dict(
    state_dict: Mapping[str, torch.Tensor], origin: str = "state dict", img_size: int = 224
) -> dict[str, torch.Tensor]:
    """DINOv3's layout -> dinolite's (``pos_embed=rope``), the module docstring's rules."""
    if any(key.startswith("cls_norm.") for key in state_dict):
        raise ExportFormatError(
            f"{origin}: has cls_norm.* (DINOv3's untie_cls_and_patch_norms: another final norm for the CLS and "
            "storage tokens), which dinolite's backbone does not have"
        )
    sd = {k: v for k, v in state_dict.items() if not k.startswith("local_cls_norm.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _BIAS_MASK.match(key):
            continue
        if key.endswith(".attn.qkv.bias") and f"{key}_mask" in sd:
            value = value * sd[f"{key}_mask"].to(value.dtype)
        swiglu = _SWIGLU.match(key)
        if swiglu:
            if swiglu.group(2) == "1":
                prefix, kind = swiglu.group(1), swiglu.group(3)
                out[f"{prefix}.w12.{kind}"] = torch.cat((value, sd[f"{prefix}.w2.{kind}"]))
            continue
        out["register_tokens" if key == "storage_tokens" else key] = value
    patch = int(out["patch_embed.proj.weight"].shape[-1])
    if img_size % patch:
        raise ExportFormatError(f"{origin}: img_size={img_size} is not a multiple of the {patch}-pixel patch")
    width = int(out["patch_embed.proj.weight"].shape[0])
    out["pos_embed"] = torch.zeros(1, int("cls_token" in out) + (img_size // patch) ** 2, width)
    return out


def to_dinov3_state_dict(state_dict: Mapping[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """dinolite's ``pos_embed=rope`` layout -> DINOv3's (loads with ``strict=True`` into its ViT built with
    ``mask_k_bias=True``; the all-ones mask keeps every bias)."""
    if spec.position != "rope" or not spec.cls_token:
        raise ExportFormatError(
            f"DINOv3's ViT has RoPE and a CLS token; this backbone's record says position={spec.position}, "
            f"cls_token={spec.cls_token}: export it as safetensors instead"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            continue
        if key.endswith(".mlp.w12.weight") or key.endswith(".mlp.w12.bias"):
            first, second = value.chunk(2, dim=0)
            out[key.replace(".w12.", ".w1.")], out[key.replace(".w12.", ".w2.")] = first, second
            continue
        out["storage_tokens" if key == "register_tokens" else key] = value
        if key.endswith(".attn.qkv.bias"):
            out[f"{key}_mask"] = torch.ones_like(value)
    return {k: v.contiguous() for k, v in out.items()}


def dinov3_vit_kwargs(spec: BackboneSpec) -> dict[str, object]:
    """Keyword arguments of DINOv3's ``DinoVisionTransformer`` for ``spec`` (what ``to_dinov3_state_dict``
    loads into)."""
    if spec.ffn_layer != "mlp":
        raise ExportFormatError(
            f"ffn_layer={spec.ffn_layer}: dinolite's SwiGLU hidden size follows DINOv2's rounding, DINOv3's depends "
            "on align_to; only MLP backbones are mapped to DINOv3's constructor"
        )
    return dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        ffn_ratio=spec.mlp_ratio,
        qkv_bias=spec.qkv_bias,
        proj_bias=spec.proj_bias,
        ffn_bias=spec.ffn_bias,
        layerscale_init=spec.layerscale,
        norm_layer="layernormbf16" if spec.layernorm_eps == DINOV3_LAYERNORM_EPS else "layernorm",
        n_storage_tokens=spec.num_register_tokens,
        mask_k_bias=True,
        pos_embed_rope_normalize_coords=spec.rope_normalize_coords,
        pos_embed_rope_dtype="fp32",
    )
