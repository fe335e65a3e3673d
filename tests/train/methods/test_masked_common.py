"""dinolite/train/methods/masked_common.py: FLOPs of ViTs on a subset of tokens, and errors naming the section."""

from __future__ import annotations

import pytest

from dinolite.config import ConfigError, load_config
from dinolite.models.backbone_factory import backbone_kwargs
from dinolite.train.methods.masked_common import checked, embed_dim, flops_record, transformer_macs, vit_macs

TINY = ["student.depth=2", "student.embed_dim=24", "student.num_heads=2", "train.batch_size_per_gpu=4"]


def test_transformer_macs_by_hand() -> None:
    # per block: T (4 + 2r) D^2 + 2 T^2 D with T=5, D=4, r=4 -> 5*12*16 + 2*25*4 = 960 + 200
    assert transformer_macs(5, 4, depth=2) == 2 * 1160
    assert transformer_macs(5, 4, depth=1, mlp_ratio=2.0) == 5 * 8 * 16 + 200


def test_vit_macs_embed_every_patch_and_encode_the_visible_ones() -> None:
    cfg = load_config("demo_ijepa", TINY)
    size = cfg.crops.global_crops_size
    kw = backbone_kwargs(cfg.student, size)
    n = (size // kw["patch_size"]) ** 2
    extra = 1 + kw["num_register_tokens"]
    patch_embed = n * 3 * kw["patch_size"] ** 2 * kw["embed_dim"]
    assert embed_dim(cfg) == kw["embed_dim"] == 24
    assert vit_macs(cfg, size) == patch_embed + transformer_macs(extra + n, 24, kw["depth"])
    assert vit_macs(cfg, size, visible_patches=3) == patch_embed + transformer_macs(extra + 3, 24, kw["depth"])
    cls_free = load_config("demo_ijepa", [*TINY, "student.cls_token=false"])  # patches (and registers) alone
    assert vit_macs(cls_free, size, visible_patches=3) == patch_embed + transformer_macs(extra - 1 + 3, 24, kw["depth"])


def test_flops_record_counts_student_forward_and_backward_and_teacher_forward() -> None:
    cfg = load_config("demo_ijepa", TINY)
    record = flops_record(10.0, 4.0, cfg, flops_context_encoder=7)
    assert record == {
        "flops_student_per_image": 60,
        "flops_teacher_per_image": 8,
        "flops_per_image": 68,
        "batch_size_per_gpu": 4,
        "flops_per_batch": 272,
        "flops_context_encoder": 7,
    }


def test_checked_turns_value_errors_into_config_errors_naming_the_section() -> None:
    def bad() -> None:
        raise ValueError("mask ratio 1.5 > 1")

    with pytest.raises(ConfigError, match=r"invalid 'msn' settings: mask ratio 1\.5 > 1"):
        checked("msn", bad)
    assert checked("msn", lambda: 3) == 3


def test_checked_lets_config_errors_and_other_errors_through_unchanged() -> None:
    original = ConfigError("msn.mask_ratio: 2")

    def raise_config() -> None:
        raise original

    with pytest.raises(ConfigError) as error:
        checked("msn", raise_config)
    assert error.value is original
    with pytest.raises(KeyError):
        checked("msn", lambda: {}["x"])
