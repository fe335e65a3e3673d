"""The named ViT sizes and building a backbone from a config (dinolite.models.backbone_factory): every factory
builds its published shape and parameter count, and ``build_backbone`` maps the ``student.*`` keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.config import load_config
from dinolite.models import swiglu_hidden_dim
from dinolite.models.backbone_factory import ARCHITECTURES, FACTORIES, build_backbone, vit_giant2


@pytest.mark.parametrize("arch", list(FACTORIES))
def test_factory_full_size_on_meta(arch):
    with torch.device("meta"):
        model = FACTORIES[arch](patch_size=14)
    spec = ARCHITECTURES[arch]
    assert (model.embed_dim, model.n_blocks, model.num_heads) == (spec["embed_dim"], spec["depth"], spec["num_heads"])
    assert len(model.blocks) == spec["depth"]
    d, depth = spec["embed_dim"], spec["depth"]
    n_patches = (224 // 14) ** 2
    # per block: norms 4D, qkv 3D^2+3D, proj D^2+D, fc1 4D^2+4D, fc2 4D^2+D (no LayerScale by default)
    expected = 3 * 14 * 14 * d + d + (1 + n_patches) * d + d + d + depth * (12 * d * d + 13 * d) + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected


def test_giant2_shape():
    with torch.device("meta"):
        model = vit_giant2(patch_size=14, ffn_layer="swiglu")
    assert model.embed_dim == 1536 and model.n_blocks == 40 and model.num_heads == 24
    assert model.blocks[0].mlp.w12.weight.shape == (2 * 4096, 1536)
    assert model.blocks[0].mlp.w3.weight.shape == (1536, 4096)


def test_build_backbone_from_full_config():
    cfg = load_config("demo", ["student.layerscale=1e-5"])
    model = build_backbone(cfg)
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.patch_size) == (96, 4, 3, 4)
    assert model.pos_embed.shape == (1, 1 + (32 // 4) ** 2, 96)
    assert torch.equal(model.blocks[0].ls1.gamma, torch.full((96,), 1e-5))


def test_build_backbone_from_student_config_maps_keys():
    cfg = load_config(
        "vitl14",
        [
            "student.depth=2",
            "student.layerscale=0",
            "student.num_register_tokens=4",
            "student.ffn_layer=swiglufused",
            "student.attention=sdpa",
        ],
    )
    with torch.device("meta"):
        model = build_backbone(cfg.student, img_size=98)
    assert model.embed_dim == 1024 and model.n_blocks == 2 and model.patch_size == 14
    assert model.pos_embed.shape == (1, 1 + 49, 1024)
    assert isinstance(model.blocks[0].ls1, nn.Identity)
    assert model.blocks[0].mlp.hidden_features == swiglu_hidden_dim(4096)
    assert model.register_tokens.shape == (1, 4, 1024)
    assert model.attention_backend.requested == "sdpa"
    assert [b.sample_drop_ratio for b in model.blocks] == [0.4, 0.4]  # drop_path_uniform: true


def test_bad_head_split_is_refused_at_load_and_at_build():
    # The config refuses it at start-up, naming the key ...
    with pytest.raises(ValueError, match="'student.embed_dim': 100; must be a multiple of student.num_heads=3"):
        load_config("demo", ["student.embed_dim=100"])
    # ... and the builder still refuses a config changed in code after validation.
    cfg = load_config("demo")
    cfg.student.embed_dim = 100
    with pytest.raises(ValueError, match="student.embed_dim=100 is not divisible by student.num_heads=3"):
        build_backbone(cfg)
