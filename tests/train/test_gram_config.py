"""The ``gram`` config section (dinolite/train/gram_config.py): DINOv3's keys and defaults, off by default,
DINOv3's rules (and range checks), a schedule for the loss weight, and where the section is offered."""

from __future__ import annotations

import dataclasses

import pytest

import dinolite.train.methods  # noqa: F401  (registers the methods and their sections)
from dinolite.config import ConfigError, load_config, methods_using
from dinolite.train.gram import gram_weight_schedule
from dinolite.train.gram_config import GramConfig

# DINOv3's configs/ssl_default_config.yaml, section gram (facebookresearch/dinov3@6876159)
DINOV3_DEFAULTS = {
    "use_loss": False,
    "loss_weight": 1.0,
    "ema_teacher": False,
    "it_load_ema_teacher": -1,
    "rep_update": True,
    "update_frequency": 50000,
    "it_first_update": 0,
    "max_updates": None,
    "normalized": True,
    "img_level": False,
    "remove_neg": False,
    "remove_only_teacher_neg": False,
    "tokens_used": "all",
    "global_teacher_resize_method": "bicubic",
    "global_teacher_resize_antialias": False,
    "loss_weight_schedule": None,
}
ON = ["gram.use_loss=true", "gram.it_load_ema_teacher=0"]


def test_the_defaults_are_dinov3s_and_the_section_is_off():
    defaults = {f.name: getattr(GramConfig(), f.name) for f in dataclasses.fields(GramConfig)}
    assert defaults == DINOV3_DEFAULTS
    assert load_config("demo").gram.use_loss is False
    assert "dinov2" in methods_using("gram")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["gram.use_loss=true"], "gram.it_load_ema_teacher"),
        ([*ON, "gram.ema_teacher=true"], "gram.rep_update must be false"),
        ([*ON, "gram.remove_neg=true", "gram.remove_only_teacher_neg=true"], "cannot both be true"),
        ([*ON, "gram.tokens_used=masked", "gram.img_level=true"], "needs gram.img_level=false"),
        ([*ON, "gram.tokens_used=some"], "gram.tokens_used"),
        ([*ON, "gram.global_teacher_resize_method=lanczos"], "gram.global_teacher_resize_method"),
        ([*ON, "gram.update_frequency=0"], "gram.update_frequency"),
        ([*ON, "gram.max_updates=-1"], "gram.max_updates"),
        ([*ON, "gram.loss_weight=-1"], "gram.loss_weight"),
        ([*ON, "gram.loss_weight_schedule={end: 1, warmup_epochs: 90, cosine_epochs: 20}"], "exceed optim.epochs"),
    ],
)
def test_dinov3s_rules(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("demo", overrides)


def test_the_rules_wait_for_use_loss():
    assert load_config("demo", ["gram.update_frequency=0"]).gram.update_frequency == 0  # off: not checked
    ema = load_config("demo", ["gram.use_loss=true", "gram.ema_teacher=true", "gram.rep_update=false"])
    assert ema.gram.it_load_ema_teacher == -1  # no Gram teacher to load


def test_the_loss_weight_and_its_schedule():
    cfg = load_config("demo", [*ON, "gram.loss_weight=0.3"])
    total = cfg.optim.epochs * cfg.train.iterations_per_epoch
    constant = gram_weight_schedule(cfg.gram, cfg.train.iterations_per_epoch, total)
    assert {constant(i) for i in (0, total // 2, total)} == {0.3}
    # DINOv3's ViT-7B Gram recipe shape (0 until warmup_epochs, a 1-epoch half-cosine up to 2, then 2)
    cfg = load_config(
        "demo", [*ON, "gram.loss_weight_schedule={start: 0, peak: 0, end: 2, warmup_epochs: 2, cosine_epochs: 1}"]
    )
    epoch = cfg.train.iterations_per_epoch
    s = gram_weight_schedule(cfg.gram, epoch, cfg.optim.epochs * epoch)
    assert s(0) == 0.0 and s(2 * epoch - 1) == 0.0 and s(2 * epoch) == 0.0
    assert s(3 * epoch - 1) == pytest.approx(2.0) and s(3 * epoch) == 2.0 and s(cfg.optim.epochs * epoch - 1) == 2.0
