"""dinolite/train/methods/dinov2.py: the DINOv2 objective built from a config, its heads and its FLOP formula.

The step itself is specified by tests/train/methods/test_dinov2_objective.py and the golden step."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.train.methods import dinov2
from dinolite.train.schedules import scaled_lr

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


def _first_step_terms(preset: str) -> tuple[set[str], dict]:
    cfg = load_config(preset, [*TINY, "crops.local_crops_number=1"])
    objective = dinov2.build_objective(cfg)
    transform, collate = dinov2.build_transform(cfg), dinov2.build_collate(cfg)
    images = [
        torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        for i in range(4)
    ]
    batch = collate([transform(img, generator=torch.Generator().manual_seed(i)) for i, img in enumerate(images)])
    return set(objective(batch, 0).terms), batch


@pytest.mark.parametrize(
    ("preset", "terms", "masked"),
    [
        ("demo", {"dino_loss", "ibot_loss", "koleo_loss"}, True),
        ("demo_dino", {"dino_loss"}, False),
        ("demo_ibot", {"dino_loss", "ibot_loss"}, True),
    ],
)
def test_dino_and_ibot_presets_train_their_papers_terms_only(preset: str, terms: set[str], masked: bool) -> None:
    """DINO: the CLS loss on whole crops (no masked student crops); iBOT: CLS + masked patches, no KoLeo."""
    got, batch = _first_step_terms(preset)
    assert got == terms
    assert bool(batch["collated_masks"].any()) == masked
    assert dinov2.head_names(load_config(preset, TINY)) == ("dino_head",)  # one head (iBOT's is shared)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (
            "vitb16_dino",
            {
                "dino.head_n_prototypes": 65536,
                "ibot.loss_weight": 0.0,
                "dino.koleo_loss_weight": 0.0,
                "teacher.warmup_teacher_temp_epochs": 30,
                "teacher.center_momentum": 0.9,
                "ema.momentum": 0.996,
                "student.layerscale": 0.0,
                "optim.layerwise_decay": 1.0,
                "crops.local_crops_number": 8,
            },
        ),
        (
            "vitb16_ibot",
            {
                "dino.head_n_prototypes": 8192,
                "ibot.loss_weight": 1.0,
                "ibot.separate_head": False,
                "dino.koleo_loss_weight": 0.0,
                "ibot.mask_ratio_min_max": [0.1, 0.5],
                "ibot.mask_sample_probability": 0.5,
                "crops.local_crops_number": 10,
            },
        ),
    ],
)
def test_the_vitb16_dino_and_ibot_presets_load_with_their_papers_values(preset: str, expected: dict) -> None:
    cfg = load_config(preset)
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
    # the releases' lr, 5e-4 per 256 images scaled linearly, at their batch of 16 GPUs x 64 and at 256
    assert scaled_lr(cfg.optim.base_lr, cfg.optim.scaling_rule, 16 * cfg.train.batch_size_per_gpu) == pytest.approx(
        0.0005 * 1024 / 256
    )
    assert scaled_lr(cfg.optim.base_lr, cfg.optim.scaling_rule, 256) == pytest.approx(0.0005)
