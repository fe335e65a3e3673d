"""Model summary: fvcore counts against the analytic formula, training FLOPs, CLI."""

from __future__ import annotations

import pytest
import torch

from dinolite.commands.info import main
from dinolite.commands.summary import main as summary_main
from dinolite.config import load_config
from dinolite.models import DinoVisionTransformer, vit_large
from dinolite.models.info import (
    backbone_forward_macs,
    count_parameters,
    forward_flops,
    forward_macs,
    model_summary,
)
from dinolite.train.methods.dinov2 import training_flops


def analytic_vit_macs(img: int, patch: int, dim: int, depth: int, mlp_hidden: int, in_chans: int = 3) -> int:
    """Multiply-adds of a ViT forward: patch conv, per block qkv + proj + 2 MLP matmuls + QK^T + AV,
    plus fvcore's 5 per element for each LayerNorm (2 per block + final)."""
    n = (img // patch) ** 2
    t = n + 1
    per_block = t * (3 * dim * dim + dim * dim + 2 * dim * mlp_hidden) + 2 * t * t * dim
    return n * in_chans * patch * patch * dim + depth * per_block + (2 * depth + 1) * 5 * t * dim


def test_fvcore_count_equals_formula_exactly():
    model = DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=4)
    assert forward_macs(model, (torch.zeros(1, 3, 64, 64),)) == analytic_vit_macs(64, 16, 48, 2, 192)
    assert forward_flops(model, 64) == 2 * analytic_vit_macs(64, 16, 48, 2, 192)


def test_depth_extrapolation_equals_direct_trace():
    kwargs = dict(img_size=64, patch_size=16, embed_dim=48, depth=5, num_heads=4, init_values=1e-5)
    direct = forward_macs(DinoVisionTransformer(**kwargs), (torch.zeros(1, 3, 48, 80),))
    assert backbone_forward_macs(kwargs, (48, 80)) == direct


@pytest.mark.parametrize(
    "name,kwargs,gmacs",
    [
        ("ViT-S/16", dict(embed_dim=384, depth=12, num_heads=6), 4.6),
        ("ViT-L/16", dict(embed_dim=1024, depth=24, num_heads=16), 61.6),
    ],
)
def test_published_gmacs_at_224(name, kwargs, gmacs):
    full = dict(img_size=224, patch_size=16, **kwargs)
    macs = backbone_forward_macs(full, 224)
    assert macs == analytic_vit_macs(224, 16, kwargs["embed_dim"], kwargs["depth"], 4 * kwargs["embed_dim"])
    assert macs / 1e9 == pytest.approx(gmacs, abs=0.05), name


def test_parameter_count_on_meta():
    with torch.device("meta"):
        model = vit_large(patch_size=16)
    d, depth = 1024, 24
    # factory default: no LayerScale
    expected = 3 * 16 * 16 * d + d + 197 * d + 2 * d + depth * (12 * d * d + 13 * d) + 2 * d
    assert count_parameters(model) == expected
    shared = torch.nn.Linear(3, 3)
    assert count_parameters(torch.nn.Sequential(shared, shared)) == 12


# The head sizes and crop counts the arithmetic below spells out (pinned, not the demo's current tuning).
PINNED = ["dino.head_n_prototypes=256", "crops.local_crops_number=4"]


def test_training_flops_follow_the_formula():
    cfg = load_config("demo", PINNED)
    summary = model_summary(cfg)
    train = training_flops(cfg, summary)
    g, loc = summary["macs_global_crop"], summary["macs_local_crop"]
    h = summary["macs_dino_head_per_token"]
    # head: 96 -> 256 -> 256 -> 64 (bias not counted), then 64 -> 256 prototypes
    assert h == 96 * 256 + 256 * 256 + 256 * 64 + 64 * 256
    n_patches = (32 // 4) ** 2
    masked = 0.5 * (0.1 + 0.5) / 2 * n_patches
    assert train["masked_patches_per_global_crop"] == pytest.approx(masked)
    student = 3 * (2 * (g + h) + 4 * (loc + h) + 2 * masked * h)
    teacher = 2 * (g + h) + 2 * masked * h
    assert train["flops_per_image"] == round(2 * (student + teacher))
    assert train["flops_per_batch"] == round(2 * (student + teacher) * 64)
    assert train["flops_global_crop"] == 2 * g == 2 * analytic_vit_macs(32, 4, 96, 4, 384)
    assert summary["params_total"] == summary["params_backbone"] + summary["params_heads"]


def test_separate_ibot_head_is_counted():
    shared = model_summary(load_config("demo", PINNED))
    separate = model_summary(load_config("demo", PINNED + ["ibot.separate_head=true", "ibot.head_n_prototypes=512"]))
    assert separate["params_heads"] > shared["params_heads"]
    assert separate["macs_ibot_head_per_token"] == shared["macs_dino_head_per_token"] + 64 * 256


def test_cli_prints_summary(capsys):
    assert main(["--config", "demo"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny / patch 4" in out and "MMACs" in out and "total / img" not in out
    assert main(["--config", "no_such_preset"]) == 2
    assert "unknown config preset 'no_such_preset'" in capsys.readouterr().err


def test_training_summary_cli_adds_the_method_flops(capsys):
    assert summary_main(["--config", "demo"]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny / patch 4" in out and "training iteration (dinov2)" in out
    assert "student / img" in out and "teacher / img" in out and "total / img" in out
    assert summary_main(["--config", "demo", "train.method=dinov3"]) == 2
    assert "did you mean 'dinov2'" in capsys.readouterr().err
