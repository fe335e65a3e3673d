"""dinolite/train/methods/dinov2_config.py: DINOv2's dino, ibot and teacher sections and their rules."""

from __future__ import annotations

import pytest

import dinolite.train.methods  # noqa: F401 - registering the methods registers their sections and rules
from dinolite.config import ConfigError, load_config


def test_prototypes_frozen_for_the_whole_run_are_refused_for_dinov2_only() -> None:
    with pytest.raises(ConfigError, match=r"'optim.freeze_last_layer_epochs': 3; must be < optim.epochs=3"):
        load_config("demo", ["optim.epochs=3", "optim.freeze_last_layer_epochs=3"])
    load_config("demo", ["optim.epochs=3", "optim.freeze_last_layer_epochs=2"])
    load_config("demo_simclr", ["optim.epochs=3", "optim.freeze_last_layer_epochs=3"])


def test_ibot_needs_enough_patches_to_mask_and_says_which_crop_size_works() -> None:
    with pytest.raises(ConfigError, match=r"'crops.global_crops_size': 16 with student.patch_size=8 gives 2x2 patches"):
        load_config("demo", ["crops.global_crops_size=16", "student.patch_size=8"])
    load_config("demo_simclr", ["crops.global_crops_size=16", "student.patch_size=8"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("dino.head_n_prototypes=0", "dino.head_n_prototypes"),
        ("dino.koleo_loss_weight=-0.1", "dino.koleo_loss_weight"),
        ("ibot.mask_sample_probability=1.5", "ibot.mask_sample_probability"),
        ("teacher.center_momentum=1.5", "teacher.center_momentum"),
        ("teacher.teacher_temp=0", "teacher.teacher_temp"),
        ("train.centering=median", "train.centering"),
    ],
)
def test_each_section_names_the_key_at_fault(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config("demo", [override])


def test_a_shared_head_cannot_take_ibot_head_settings_of_its_own() -> None:
    with pytest.raises(ConfigError, match=r"'ibot.head_n_prototypes'.*ibot.separate_head=false"):
        load_config("demo", ["ibot.separate_head=false", "dino.head_n_prototypes=64", "ibot.head_n_prototypes=32"])
    load_config("demo", ["ibot.separate_head=true", "dino.head_n_prototypes=64", "ibot.head_n_prototypes=32"])
