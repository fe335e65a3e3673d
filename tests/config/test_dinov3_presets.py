"""The DINOv3-recipe presets (vits16_dinov3, vitb16_dinov3, vitl16_dinov3): every value that comes from
DINOv3's released configs (facebookresearch/dinov3 6876159, dinov3_vit7b16_pretrain.yaml and the released
backbones) resolves to that value, the schedules are DINOv3's constant ones, and the model is the released
architecture."""

from __future__ import annotations

import pytest
import torch

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.config import load_config
from dinolite.models import build_backbone
from dinolite.train.schedules import build_schedules

PRESETS = {
    "vits16_dinov3": ("vit_small", 384, 12),
    "vitb16_dinov3": ("vit_base", 768, 12),
    "vitl16_dinov3": ("vit_large", 1024, 24),
}

# key -> DINOv3's value (pretrain yaml or the released backbones)
DINOV3 = {
    "student.patch_size": 16,
    "student.layerscale": 1.0e-5,
    "student.ffn_layer": "mlp",
    "student.mask_k_bias": True,
    "student.norm_layer": "layernormbf16",
    "student.num_register_tokens": 4,
    "student.pos_embed": "rope",
    "student.pos_embed_rope_base": 100.0,
    "student.pos_embed_rope_normalize_coords": "separate",
    "student.pos_embed_rope_rescale_coords": 2.0,
    "dino.head_n_prototypes": 262144,
    "dino.head_bottleneck_dim": 512,
    "dino.head_hidden_dim": 8192,
    "dino.koleo_loss_weight": 0.1,
    "ibot.separate_head": True,
    "ibot.head_n_prototypes": 98304,
    "ibot.head_bottleneck_dim": 384,
    "ibot.head_hidden_dim": 4096,
    "ibot.mask_sample_probability": 0.5,
    "ibot.mask_ratio_min_max": [0.1, 0.5],
    "ema.momentum": 0.994,
    "ema.schedule": "constant",
    "teacher.warmup_teacher_temp": 0.04,
    "teacher.teacher_temp": 0.07,
    "teacher.warmup_teacher_temp_epochs": 100,
    "train.centering": "sinkhorn_knopp",
    "train.iterations_per_epoch": 1000,
    "optim.epochs": 1000,
    "optim.warmup_epochs": 100,
    "optim.schedule": "constant",
    "optim.weight_decay": 0.04,
    "optim.clip_grad": 30.0,
    "optim.freeze_last_layer_epochs": 5,
    "optim.patch_embed_lr_mult": 0.2,
    "optim.layerwise_decay": 0.98,
    "optim.adamw_beta2": 0.99,
    "crops.global_crops_size": 256,
    "crops.local_crops_size": 112,
    "crops.local_crops_number": 8,
    "crops.horizontal_flip_p": 0.0,
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_value_is_dinov3s(preset):
    cfg = load_config(preset)
    wrong = {key: _get(cfg, key) for key, value in DINOV3.items() if _get(cfg, key) != value}
    assert not wrong, wrong


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_rate_is_dinov3s_and_held_after_the_warm_up(preset):
    """DINOv3's 5e-5 peak times its sqrt_wrt_1024 factor (4 at a global batch of 1024): 2e-4, reached after
    100 of 1000 epochs and held; the weight decay 0.04 throughout."""
    cfg = load_config(preset)
    schedules = build_schedules(cfg.optim, cfg.train.iterations_per_epoch, 1024)
    assert [schedules.lr(it) for it in (0, 50_000, 100_000, 999_999)] == pytest.approx([0.0, 1e-4, 2e-4, 2e-4])
    assert {schedules.weight_decay(it) for it in (0, 500_000, 999_999)} == {0.04}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_backbone_is_the_released_architecture(preset):
    arch, width, depth = PRESETS[preset]
    cfg = load_config(preset)
    with torch.device("meta"):
        backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
    assert (cfg.student.arch, backbone.embed_dim, len(backbone.blocks)) == (arch, width, depth)
    assert backbone.num_register_tokens == 4 and backbone.rope_embed is not None  # RoPE, no learned table
