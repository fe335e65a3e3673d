"""torch.hub entrypoints: dinolite exports and DINOv2's entry names, from local weights (nothing is
downloaded by torch.hub itself).

    model = torch.hub.load("/path/to/dinolite", "backbone", path="teacher.safetensors", source="local")
    model = torch.hub.load("/path/to/dinolite", "dinov2_vitl14", path="dinov2_vitl14_pretrain.pth", source="local")
    model = torch.hub.load("/path/to/dinolite", "dinov2_vits14_reg", path="hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m", source="local")
    model = torch.hub.load("/path/to/dinolite", "dinov2_vitb14", pretrained=False, source="local")  # random init

DINOv3's ViT entry names (its ``hubconf.py``) build dinolite's RoPE backbone with the hub's architecture:

    model = torch.hub.load("/path/to/dinolite", "dinov3_vitb16", path="dinov3_vitb16_pretrain_lvd1689m.pth", source="local")

``path`` is anything :func:`dinolite.load_backbone` reads: a dinolite export, a DINOv2 ``.pth``, timm's or
transformers' DINOv2 weights (file or hub folder), or ``hf-hub:ORG/NAME`` (the ``hub`` extra).
"""

import dataclasses

from dinolite.export.load import load_backbone
from dinolite.export.spec import BackboneSpec
from dinolite.models import ARCHITECTURES, DinoVisionTransformer

dependencies = ["torch", "safetensors"]

# DINOv2's released backbones: patch 14, position grid for 518 px, LayerScale 1e-5; ViT-g uses SwiGLU.
# The register models resample position embeddings with antialiasing and no offset (DINOv2's hubconf).
_DINOV2_IMG_SIZE = 518


def backbone(path: str, map_location: str = "cpu"):
    """A frozen, eval-mode backbone from anything :func:`dinolite.load_backbone` reads."""
    return load_backbone(path, map_location=map_location)


def _random_init(spec: BackboneSpec, map_location: str):
    """The architecture of ``spec`` at its initialisation (``pretrained=False``), eval mode."""
    model = DinoVisionTransformer(**spec.backbone_kwargs())
    model.init_weights()
    model.spec = spec
    return model.eval().to(map_location)


def _dinov2_spec(arch: str, registers: int) -> BackboneSpec:
    dims = ARCHITECTURES[arch]
    return BackboneSpec(
        arch=arch,
        embed_dim=dims["embed_dim"],
        depth=dims["depth"],
        num_heads=dims["num_heads"],
        patch_size=14,
        img_size=_DINOV2_IMG_SIZE,
        num_register_tokens=registers,
        ffn_layer="swiglu" if arch == "vit_giant2" else "mlp",
        layerscale=1.0e-5,
        interpolate_antialias=registers > 0,
        interpolate_offset=0.0 if registers else 0.1,
        source="dinov2",
    )


def _check_depth_heads_ffn(path, name: str, got: BackboneSpec, wanted: BackboneSpec, release: str) -> None:
    """The file is the entry's network: depth, head count and FFN kind as released (width, patch size and
    registers are checked by the caller)."""
    differences = [
        f"{field} {getattr(got, field)!r} (the entry: {getattr(wanted, field)!r})"
        for field in ("depth", "num_heads", "ffn_layer")
        if getattr(got, field) != getattr(wanted, field)
    ]
    if differences:
        raise ValueError(f"{path} is not {release}'s {name}: {', '.join(differences)}; load it with 'backbone' instead")


def _dinov2(name: str, arch: str, registers: int, path, pretrained: bool, map_location: str, weights: str):
    if str(weights).upper() != "LVD142M":  # DINOv2's only weight set; the weights themselves come from path
        raise ValueError(f"{name}: weights={weights!r}; DINOv2 released LVD142M only (pass the file as path=)")
    wanted = _dinov2_spec(arch, registers)
    if path is None:
        if pretrained:
            raise ValueError(
                f"{name}: dinolite's hub entries download nothing; pass path= a local {name}_pretrain.pth "
                "(or a dinolite export, a timm/transformers folder, hf-hub:ORG/NAME), or pretrained=False"
            )
        return _random_init(wanted, map_location)
    model = backbone(path, map_location=map_location)
    got = model.spec
    if (got.arch, got.patch_size) != (arch, 14):
        raise ValueError(f"{path} holds a {got.arch}/{got.patch_size}, not a {arch}/14 ({name})")
    if got.num_register_tokens != registers:
        raise ValueError(
            f"{path} has {got.num_register_tokens} registers but {name} has {registers}: "
            f"use {name.removesuffix('_reg')}{'_reg' if got.num_register_tokens else ''}"
        )
    _check_depth_heads_ffn(path, name, got, wanted, "DINOv2")
    # DINOv2's position-embedding resampling for this entry (only matters at other image sizes)
    model.interpolate_antialias, model.interpolate_offset = wanted.interpolate_antialias, wanted.interpolate_offset
    model.spec = dataclasses.replace(
        got, interpolate_antialias=wanted.interpolate_antialias, interpolate_offset=wanted.interpolate_offset
    )
    return model


def dinov2_vits14(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-S/14 (``dinov2_vits14_pretrain.pth`` or the same weights in another layout)."""
    return _dinov2("dinov2_vits14", "vit_small", 0, path, pretrained, map_location, weights)


def dinov2_vitb14(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-B/14."""
    return _dinov2("dinov2_vitb14", "vit_base", 0, path, pretrained, map_location, weights)


def dinov2_vitl14(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-L/14."""
    return _dinov2("dinov2_vitl14", "vit_large", 0, path, pretrained, map_location, weights)


def dinov2_vitg14(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-g/14 (SwiGLU)."""
    return _dinov2("dinov2_vitg14", "vit_giant2", 0, path, pretrained, map_location, weights)


def dinov2_vits14_reg(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-S/14 with 4 registers (``dinov2_vits14_reg4_pretrain.pth``)."""
    return _dinov2("dinov2_vits14_reg", "vit_small", 4, path, pretrained, map_location, weights)


def dinov2_vitb14_reg(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-B/14 with 4 registers."""
    return _dinov2("dinov2_vitb14_reg", "vit_base", 4, path, pretrained, map_location, weights)


def dinov2_vitl14_reg(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-L/14 with 4 registers."""
    return _dinov2("dinov2_vitl14_reg", "vit_large", 4, path, pretrained, map_location, weights)


def dinov2_vitg14_reg(path=None, *, pretrained: bool = True, weights: str = "LVD142M", map_location: str = "cpu"):
    """DINOv2 ViT-g/14 with 4 registers."""
    return _dinov2("dinov2_vitg14_reg", "vit_giant2", 4, path, pretrained, map_location, weights)


# DINOv3's released ViTs with an MLP FFN (dinov3/hub/backbones.py, facebookresearch/dinov3 6876159): patch 16,
# 224 px, RoPE base 100 with separate coordinates (trained with rescale_coords 2), LayerScale 1e-5, LayerNorm eps
# 1e-5, 4 storage tokens, mask_k_bias. The SwiGLU entries (vits16plus, vitl16plus, vith16plus, vit7b16) are not
# offered: DINOv3 rounds their SwiGLU width differently (align_to) from dinolite's DINOv2 SwiGLU.
_DINOV3_WEIGHTS = ("LVD1689M", "SAT493M")


def _dinov3_spec(arch: str) -> BackboneSpec:
    dims = ARCHITECTURES[arch]
    return BackboneSpec(
        arch=arch,
        embed_dim=dims["embed_dim"],
        depth=dims["depth"],
        num_heads=dims["num_heads"],
        patch_size=16,
        img_size=224,
        num_register_tokens=4,
        layerscale=1.0e-5,
        position="rope",
        layernorm_eps=1.0e-5,
        source="dinov3",
    )


def _dinov3(name: str, arch: str, path, pretrained: bool, map_location: str, weights: str):
    if str(weights).upper() not in _DINOV3_WEIGHTS:
        raise ValueError(
            f"{name}: weights={weights!r}; DINOv3 released {', '.join(_DINOV3_WEIGHTS)} (pass the file as path=)"
        )
    wanted = _dinov3_spec(arch)
    if path is None:
        if pretrained:
            raise ValueError(
                f"{name}: dinolite's hub entries download nothing; pass path= a local {name}_pretrain_*.pth (DINOv3's "
                "layout, or the same weights in timm's / transformers' keys), or pretrained=False"
            )
        return _random_init(wanted, map_location)
    model = backbone(path, map_location=map_location)
    got = model.spec
    if (got.arch, got.patch_size, got.position, got.num_register_tokens) != (arch, 16, "rope", 4):
        raise ValueError(
            f"{path} holds a {got.arch}/{got.patch_size} with position={got.position} and {got.num_register_tokens} "
            f"registers, not DINOv3's {arch}/16 with RoPE and 4 storage tokens ({name})"
        )
    _check_depth_heads_ffn(path, name, got, wanted, "DINOv3")
    return model


def dinov3_vits16(path=None, *, pretrained: bool = True, weights: str = "LVD1689M", map_location: str = "cpu"):
    """DINOv3 ViT-S/16 (``dinov3_vits16_pretrain_lvd1689m-*.pth`` or the same weights in timm's / transformers' keys)."""
    return _dinov3("dinov3_vits16", "vit_small", path, pretrained, map_location, weights)


def dinov3_vitb16(path=None, *, pretrained: bool = True, weights: str = "LVD1689M", map_location: str = "cpu"):
    """DINOv3 ViT-B/16."""
    return _dinov3("dinov3_vitb16", "vit_base", path, pretrained, map_location, weights)


def dinov3_vitl16(path=None, *, pretrained: bool = True, weights: str = "LVD1689M", map_location: str = "cpu"):
    """DINOv3 ViT-L/16 (LVD1689M or SAT493M weights; the latter's local_cls_norm, used in training only, is dropped)."""
    return _dinov3("dinov3_vitl16", "vit_large", path, pretrained, map_location, weights)
