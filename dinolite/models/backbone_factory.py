"""The named ViT sizes and building a :class:`DinoVisionTransformer` from a config.

``vit_tiny`` ... ``vit_giant2`` are DINOv2's factory names and keyword arguments (``vit_tiny`` is DeiT-Ti's
shape); :func:`backbone_kwargs` maps a ``StudentConfig`` (``student.*`` keys) onto the class's keyword
arguments, and :func:`build_backbone` builds from a ``StudentConfig`` or a full ``Config``. The class itself,
its token layout and its state-dict keys are in :mod:`dinolite.models.vision_transformer`.
"""

from __future__ import annotations

from typing import Any

from dinolite.models.block import NORM_EPS
from dinolite.models.vision_transformer import DinoVisionTransformer

# Width, depth and heads of the named sizes (DINOv2's factories; vit_tiny is DeiT-Ti's shape).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}


def _build(arch: str, patch_size: int, kwargs: dict[str, Any]) -> DinoVisionTransformer:
    return DinoVisionTransformer(**{**ARCHITECTURES[arch], "patch_size": patch_size, **kwargs})


def vit_tiny(patch_size: int = 16, **kwargs: Any) -> DinoVisionTransformer:
    """192 wide, 12 deep, 3 heads (~5.5 M parameters)."""
    return _build("vit_tiny", patch_size, kwargs)


def vit_small(patch_size: int = 16, **kwargs: Any) -> DinoVisionTransformer:
    """384 wide, 12 deep, 6 heads (~21 M parameters)."""
    return _build("vit_small", patch_size, kwargs)


def vit_base(patch_size: int = 16, **kwargs: Any) -> DinoVisionTransformer:
    """768 wide, 12 deep, 12 heads (~86 M parameters)."""
    return _build("vit_base", patch_size, kwargs)


def vit_large(patch_size: int = 16, **kwargs: Any) -> DinoVisionTransformer:
    """1024 wide, 24 deep, 16 heads (~300 M parameters)."""
    return _build("vit_large", patch_size, kwargs)


def vit_giant2(patch_size: int = 16, **kwargs: Any) -> DinoVisionTransformer:
    """DINOv2's ViT-g: 1536 wide, 40 deep, 24 heads (64 per head; ~1.1 B parameters with SwiGLU)."""
    return _build("vit_giant2", patch_size, kwargs)


FACTORIES = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant2": vit_giant2,
}


def backbone_kwargs(student_cfg: Any, img_size: int = 224) -> dict[str, Any]:
    """Keyword arguments of :class:`DinoVisionTransformer` for a ``StudentConfig`` (arch sizes applied).

    ``layerscale`` becomes ``init_values`` (0 turns LayerScale off), ``swiglufused`` becomes ``swiglu``,
    and ``embed_dim``/``depth``/``num_heads`` override the arch's values when set.
    """
    arch = student_cfg.arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"student.arch={arch!r} is not one of {', '.join(ARCHITECTURES)}")
    kwargs: dict[str, Any] = dict(ARCHITECTURES[arch])
    for key in ("embed_dim", "depth", "num_heads"):
        value = getattr(student_cfg, key)
        if value is not None:
            kwargs[key] = value
    ffn_layer = "swiglu" if student_cfg.ffn_layer == "swiglufused" else student_cfg.ffn_layer
    kwargs.update(
        img_size=img_size,
        patch_size=student_cfg.patch_size,
        drop_path_rate=student_cfg.drop_path_rate,
        drop_path_uniform=student_cfg.drop_path_uniform,
        init_values=student_cfg.layerscale or None,
        ffn_layer=ffn_layer,
        qkv_bias=student_cfg.qkv_bias,
        proj_bias=student_cfg.proj_bias,
        ffn_bias=student_cfg.ffn_bias,
        num_register_tokens=student_cfg.num_register_tokens,
        interpolate_antialias=student_cfg.interpolate_antialias,
        interpolate_offset=student_cfg.interpolate_offset,
        attention=student_cfg.attention,
        pos_embed_type=student_cfg.pos_embed,
        weight_init=student_cfg.weight_init,
        sincos_order=student_cfg.sincos_order,
        cls_token=student_cfg.cls_token,
        mask_token_init=student_cfg.mask_token_init,
        rope=rope_options(student_cfg) if student_cfg.pos_embed == "rope" else None,
        layernorm_eps=NORM_EPS[student_cfg.norm_layer],
        mask_k_bias=student_cfg.mask_k_bias,
        crop_packing=student_cfg.crop_packing,
    )
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise ValueError(
            f"student.embed_dim={kwargs['embed_dim']} is not divisible by student.num_heads={kwargs['num_heads']}"
        )
    return kwargs


def rope_options(student_cfg: Any) -> dict[str, Any]:
    """:class:`RopePositionEmbedding`'s keyword arguments from the ``student.pos_embed_rope_*`` keys (DINOv3's names)."""
    names = ("base", "min_period", "max_period", "normalize_coords", "shift_coords", "jitter_coords", "rescale_coords")
    return {name: getattr(student_cfg, f"pos_embed_rope_{name}") for name in names}


def build_backbone(cfg: Any, img_size: int | None = None) -> DinoVisionTransformer:
    """Backbone from a ``StudentConfig`` (+ ``img_size``, default 224) or a full ``Config`` (then
    ``cfg.student`` and, unless ``img_size`` is given, ``cfg.crops.global_crops_size``)."""
    if hasattr(cfg, "student"):
        student_cfg = cfg.student
        img_size = img_size if img_size is not None else cfg.crops.global_crops_size
    else:
        student_cfg = cfg
    return DinoVisionTransformer(**backbone_kwargs(student_cfg, img_size if img_size is not None else 224))
