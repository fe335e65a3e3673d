"""check_startup: training's start-up checks without training (dinolite-train --dry-run)."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.models import build_backbone
from dinolite.train.methods import get_method, list_methods
from dinolite.train.preflight import check_startup

# A demo preset that reads another run's output (distillation's teacher, ./output/demo; BEiT's tokenizer, written by
# dinolite-train-tokenizer) gets a stand-in here; a missing teacher or tokenizer is refused
# (tests/train/methods/test_distillation.py, tests/train/methods/test_beit.py).
PRESET_INPUTS = {"distillation": ["distillation.teacher_weights=random"], "beit": ["beit.tokenizer=random"]}


@pytest.mark.parametrize("method", list_methods())
def test_every_method_demo_passes(method):
    check_startup(load_config(get_method(method).demo_preset, PRESET_INPUTS.get(method, [])))


def test_an_unknown_method_is_refused_with_the_nearest_name():
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        check_startup(load_config("demo", ["train.method=simclrr"]))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.fixed_lr_modules=[predictor]", r"'optim.fixed_lr_modules': \['predictor'\] name no student module"),
        ("optim.unclipped_modules=[prototypes]", r"'optim.unclipped_modules': \['prototypes'\] name no student module"),
    ],
)
def test_optimizer_options_that_name_no_student_module_are_refused(override, expected):
    """The module lists of the released recipes (SimSiam's predictor, MSN's prototypes) are checked against the
    method's student before training; the message lists the modules there are."""
    with pytest.raises(ConfigError, match=expected + r"; it has \['backbone', 'dino_head'\]"):
        check_startup(load_config("demo", [override]))


def test_student_weights_that_do_not_fit_are_refused(tmp_path):
    weights = tmp_path / "small.pth"
    small = ["student.embed_dim=384", "student.num_heads=6", "student.depth=1"]
    torch.save(build_backbone(load_config("demo", small)).state_dict(), weights)
    check_startup(load_config("demo", [*small, f"student.pretrained_weights={weights}"]))
    with pytest.raises(ConfigError, match=r"student.embed_dim=96 conflicts .* whose embed_dim is 384"):
        check_startup(load_config("demo", [f"student.pretrained_weights={weights}"]))
