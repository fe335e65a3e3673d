"""ViT backbones, projection heads and projector/predictor MLPs with DINOv2's interface and state-dict layout."""

from dinolite.models.attention import AttentionBackend, explicit_attention, xformers_available
from dinolite.models.backbone_factory import (
    ARCHITECTURES,
    backbone_kwargs,
    build_backbone,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
    vit_tiny,
)
from dinolite.models.ffn import swiglu_hidden_dim
from dinolite.models.heads import DINOHead, build_heads, dinov2_head_state_dict
from dinolite.models.projector import GlobalBatchNorm1d, ProjectionMLP
from dinolite.models.vision_transformer import DinoVisionTransformer

__all__ = [
    "ARCHITECTURES",
    "AttentionBackend",
    "DINOHead",
    "DinoVisionTransformer",
    "GlobalBatchNorm1d",
    "ProjectionMLP",
    "backbone_kwargs",
    "build_backbone",
    "build_heads",
    "dinov2_head_state_dict",
    "explicit_attention",
    "swiglu_hidden_dim",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_tiny",
    "xformers_available",
]
