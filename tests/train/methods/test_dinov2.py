"""dinolite/train/methods/dinov2.py: the DINOv2 objective built from a config, its heads and its FLOP formula.

The step itself is specified by tests/train/methods/test_dinov2_objective.py and the golden step."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.train.methods import dinov2

TINY = ["student.depth=1", "student.embed_dim=24", "student.num_heads=2", "train.batch_size_per_gpu=4"]


@pytest.mark.parametrize("separate", [True, False])
def test_the_student_heads_follow_ibot_separate_head(separate: bool) -> None:
    cfg = load_config("demo", [*TINY, f"ibot.separate_head={str(separate).lower()}"])
    objective = dinov2.build_objective(cfg)
    assert dinov2.head_names(cfg) == (("dino_head", "ibot_head") if separate else ("dino_head",))
    assert set(objective.student) == {"backbone", *dinov2.head_names(cfg)}
    assert set(objective.teacher) == set(objective.student)


def test_koleo_needs_two_images_per_gpu() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size_per_gpu=1 with dino.koleo_loss_weight=0.1"):
        dinov2.build_objective(load_config("demo", [*TINY, "train.batch_size_per_gpu=1", "dino.koleo_loss_weight=0.1"]))
    dinov2.build_objective(load_config("demo", [*TINY, "train.batch_size_per_gpu=1", "dino.koleo_loss_weight=0"]))


def test_flops_follow_the_documented_formula() -> None:
    cfg = load_config("demo", [*TINY, "crops.local_crops_number=3", "ibot.mask_sample_probability=0.5"])
    summary = {
        "macs_global_crop": 100,
        "macs_local_crop": 10,
        "macs_dino_head_per_token": 2,
        "macs_ibot_head_per_token": 1,
    }
    lo, hi = cfg.ibot.mask_ratio_min_max
    masked = 0.5 * (lo + hi) / 2 * (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    student = 2 * (100 + 2) + 3 * (10 + 2) + 2 * masked * 1
    teacher = 2 * (100 + 2) + 2 * masked * 1
    flops = dinov2.training_flops(cfg, summary)
    assert flops["masked_patches_per_global_crop"] == pytest.approx(masked)
    assert flops["flops_student_per_image"] == round(6 * student)
    assert flops["flops_per_batch"] == round(2 * (3 * student + teacher) * 4)
    no_ibot = dinov2.training_flops(load_config("demo", [*TINY, "ibot.loss_weight=0"]), summary)
    assert no_ibot["masked_patches_per_global_crop"] == 0.0


def test_the_collate_masks_global_crops_within_half_the_patches() -> None:
    cfg = load_config("demo", TINY)
    spec_transform = dinov2.build_transform(cfg)
    collate = dinov2.build_collate(cfg)
    images = [torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8) for _ in range(4)]
    samples = [spec_transform(img, generator=torch.Generator().manual_seed(i)) for i, img in enumerate(images)]
    batch = collate(samples, generator=torch.Generator().manual_seed(0))
    n_tokens = (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    assert batch["collated_global_crops"].shape[0] == 2 * 4
    assert batch["collated_masks"].shape == (8, n_tokens)
    assert int(batch["collated_masks"].sum(dim=1).max()) <= n_tokens // 2
