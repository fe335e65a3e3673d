"""MoCo v3's step against facebookresearch/moco-v3 (``c349e6e``), through the released-step harness of
tests/methods/test_released_steps.py.

``tests/fixtures/released/mocov3.safetensors`` holds one iteration of the release (its ``MoCo_ViT`` around its
``VisionTransformerMoCo`` at a tiny size, ``--stop-grad-conv1``, ``--moco-t 0.2``, AdamW at weight decay 0.1 on
every parameter, iteration 400 = epoch 40.0 of 300 with 10 iterations per epoch): the loss, every gradient, every
parameter after the AdamW step, and the momentum encoder after the next iteration's momentum update. Recorded
by /work/wt/notes/released_golden/mocov3.py (docs/faithfulness.md, "MoCo v3").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from dinolite.config import load_config
from dinolite.train.ema import run_momentum_schedule
from dinolite.train.methods import get_method
from dinolite.train.optim import optimizer_for
from dinolite.train.schedules import TrainingSchedules, build_schedules
from dinolite.train.step import TrainingStep
from tests.methods.released_harness import (
    NO_LR_LAYERS,
    ReleasedOptimizer,
    ReleasedStep,
    after_step_mismatches,
    backbone_overrides,
    build,
    fixture_batch,
    gradient_mismatches,
    largest,
    read_fixture,
    run_optimizer_step,
    run_step,
)

ITERATION = 400  # epoch 40.0 with the fixture's 10 iterations per epoch


def mocov3_overrides(settings: Mapping[str, Any]) -> list[str]:
    """moco/builder.py MoCo_ViT: projector 3 layers and predictor 2 layers through ``mlp_dim``, both ending in a
    BatchNorm without affine; ``--moco-t``; ``--stop-grad-conv1``; vits.py's fixed sine-cosine positions; the
    schedule the fixture's iteration sits in."""
    return [
        "joint_embedding.projector_layers=3",
        f"joint_embedding.projector_hidden_dim={settings['mlp_dim']}",
        f"joint_embedding.projector_out_dim={settings['dim']}",
        "joint_embedding.projector_last_bn=true",
        "joint_embedding.predictor_layers=2",
        f"joint_embedding.predictor_hidden_dim={settings['mlp_dim']}",
        "joint_embedding.predictor_last_bn=true",
        f"mocov3.temperature={settings['temperature']}",
        "mocov3.freeze_patch_embed=true",
        "student.pos_embed=sincos",
        "student.sincos_order=row_first",
        f"optim.epochs={settings['epochs']}",
        f"optim.warmup_epochs={settings['warmup_epochs']}",
        f"train.iterations_per_epoch={settings['iterations_per_epoch']}",
        f"ema.momentum={settings['moco_m']}",
        "ema.final_momentum=1.0",
        "ema.schedule=cosine",
    ]


def mocov3_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """main_moco.py:228-230: AdamW over ``model.parameters()``, weight decay on every parameter; no clipping."""
    return {**NO_LR_LAYERS, "optimizer": "adamw", "decay_rule": "all", "clip_grad": "0"}


CASE = ReleasedStep(
    "mocov3",
    "demo_mocov3",
    mocov3_overrides,
    {"collated_global_crops": "inputs/collated_global_crops"},
    computed={"student.backbone.pos_embed": "the fixed sine-cosine table (test_the_position_table_is_the_releases)"},
    # float32 in another order than the release's (its timm attention): the loss within 2.4e-6; backbone.norm.bias,
    # whose exact gradient is 0 (the projector's first BatchNorm removes any shift), holds 3e-7 of rounding noise
    loss_atol=1e-5,
    grad_rtol=5e-5,
    grad_atol=1e-6,
    optimizer=ReleasedOptimizer(
        mocov3_optimizer,
        lambda fixture: (fixture.scalar("released/lr"), float(fixture.settings["weight_decay"])),
        needed={"decay_rule": "dinolite"},
        rtol=1e-4,
        atol=1e-8,
        noise_floor=1e-4,
    ),
)


@pytest.fixture(scope="module")
def fixture():
    return read_fixture("mocov3")


def test_loss_equals_the_release(fixture) -> None:
    loss, terms, _ = run_step(CASE, fixture)
    assert loss == pytest.approx(fixture.scalar("released/loss"), abs=CASE.loss_atol)
    assert terms == {"moco_v3_loss": pytest.approx(loss)}


def test_every_gradient_equals_the_release(fixture) -> None:
    _, _, grads = run_step(CASE, fixture)
    released = fixture.section("released/grad/")
    assert sorted(released) == sorted(grads)  # the frozen patch projection and position table: none on both sides
    assert not any("patch_embed" in key or "pos_embed" in key for key in grads)
    assert gradient_mismatches(CASE, released, grads) == []


def test_the_release_needs_the_frozen_patch_projection(fixture) -> None:
    _, _, grads = run_step(CASE, fixture, ("mocov3.freeze_patch_embed=false",))
    extra = sorted(set(grads) - set(fixture.section("released/grad/")))
    assert extra == ["student.backbone.patch_embed.proj.bias", "student.backbone.patch_embed.proj.weight"]


def test_the_position_table_is_the_releases(fixture) -> None:
    """vits.py:55-70 builds its table with the row coordinate in the first half of the channels: dinolite's
    ``row_first`` table, with a zero CLS row."""
    released = fixture.tensors["weights/student.backbone.pos_embed"]
    for order, equal in (("row_first", True), ("column_first", False)):
        overrides = [*backbone_overrides(fixture.settings), "student.pos_embed=sincos", f"student.sincos_order={order}"]
        backbone = get_method("mocov3").build_objective(load_config("demo_mocov3", overrides)).student["backbone"]
        assert torch.allclose(backbone.pos_embed.detach(), released, atol=1e-6) is equal, order


def test_every_parameter_after_the_optimizer_step_equals_the_release(fixture) -> None:
    ours = run_optimizer_step(CASE, fixture)
    released = set(fixture.section("released/after/"))
    assert sorted(released - set(ours)) == []
    assert after_step_mismatches(CASE, fixture, ours) == []


def test_the_step_needs_decay_on_every_parameter(fixture) -> None:
    ours = run_optimizer_step(CASE, fixture, {"decay_rule": "dinolite"})
    assert after_step_mismatches(CASE, fixture, ours) != []


def test_the_momentum_encoder_after_the_next_update_equals_the_release(fixture) -> None:
    """The release moves its momentum encoder with m(k + 1) first thing in iteration k + 1; dinolite's step k does
    it after the optimizer step, with the same momentum on the same weights."""
    torch.manual_seed(0)
    options = [f"optim.{key}={value}" for key, value in mocov3_optimizer(fixture.settings).items()]
    objective, cfg = build(CASE, fixture, options)
    assert objective.target_momentum(ITERATION) == pytest.approx(fixture.scalar("released/momentum"), abs=1e-12)
    lr, weight_decay = fixture.scalar("released/lr"), float(fixture.settings["weight_decay"])
    schedules = TrainingSchedules(lr=lambda _: lr, weight_decay=lambda _: weight_decay, peak_lr=lr)
    step = TrainingStep(objective, optimizer_for(objective.student, cfg.optim), schedules, cfg.optim.clip_grad)
    step(fixture_batch(CASE, fixture, cfg), ITERATION)
    assert objective.schedule_values(ITERATION + 1)["momentum"] == pytest.approx(
        fixture.scalar("released/next_momentum"), abs=1e-12
    )
    ours = {"teacher." + key: p.detach() for key, p in objective.teacher.named_parameters()}
    released = fixture.section("released/teacher_after/")
    # dinolite's ViT has a (masked-modelling) mask token that MoCo v3 never reads
    assert sorted(set(ours) - set(released)) == ["teacher.backbone.mask_token"]
    assert sorted(set(released) - set(ours)) == []
    # the encoder moves by (1 - m) x the student's step: where the student's step is AdamW's sign of a rounding-noise
    # gradient (CASE.optimizer.noise_floor: the key bias of attention, whose exact gradient is 0), by up to
    # (1 - m) x 2 lr; everywhere else it is the release's to float32 rounding
    grads, noise_move = fixture.section("released/grad/"), (1 - fixture.scalar("released/next_momentum")) * 2 * lr
    for key, value in released.items():
        student_grad = grads.get("student." + key[len("teacher.") :])
        noise = student_grad.abs() < CASE.optimizer.noise_floor if student_grad is not None else value != value
        difference = (ours[key].double() - value.double()).abs()
        assert largest(difference[~noise]) <= 2e-6 * float(value.abs().max()) + 2e-7, key
        assert largest(difference[noise]) <= noise_move * (1 + 1e-3), key


# -- the vitb16_mocov3 preset: facebookresearch/moco-v3 c349e6e, CONFIG.md's ViT-Base command and main_moco.py
VITB16_RELEASED = {
    "student.arch": "vit_base",  # -a vit_base (vits.py:93-97)
    "student.patch_size": 16,
    "student.layerscale": 0.0,
    "student.drop_path_rate": 0.0,
    "student.pos_embed": "sincos",  # vits.py:55-70
    "student.sincos_order": "row_first",  # test_the_position_table_is_the_releases
    "optim.epochs": 300,  # --epochs=300
    "optim.warmup_epochs": 40,  # --warmup-epochs=40
    "optim.optimizer": "adamw",  # --optimizer=adamw
    "optim.weight_decay": 0.1,  # --weight-decay=.1
    "optim.weight_decay_end": 0.1,
    "optim.decay_rule": "all",  # main_moco.py:229, model.parameters()
    "optim.clip_grad": 0.0,
    "optim.min_lr": 0.0,  # main_moco.py:425
    "crops.global_crops_scale": [0.08, 1.0],  # --crop-min 0.08
    "crops.local_crops_number": 0,
    "joint_embedding.projector_layers": 3,  # moco/builder.py:118
    "joint_embedding.projector_hidden_dim": 4096,  # --moco-mlp-dim
    "joint_embedding.projector_out_dim": 256,  # --moco-dim
    "joint_embedding.projector_last_bn": True,
    "joint_embedding.predictor_layers": 2,  # moco/builder.py:122
    "joint_embedding.predictor_hidden_dim": 4096,
    "joint_embedding.predictor_last_bn": True,
    "mocov3.temperature": 0.2,  # --moco-t=.2
    "mocov3.freeze_patch_embed": True,  # --stop-grad-conv1
    "ema.momentum": 0.99,  # --moco-m
    "ema.final_momentum": 1.0,  # --moco-m-cos
}


@pytest.mark.parametrize(("key", "released"), sorted(VITB16_RELEASED.items()))
def test_vitb16_mocov3_takes_the_released_value(key: str, released) -> None:
    section, name = key.split(".")
    assert getattr(getattr(load_config("vitb16_mocov3"), section), name) == released


def test_vitb16_mocov3_schedules_follow_the_released_formulas() -> None:
    """main_moco.py:420-434 with -b 4096 and --lr 1.5e-4, at the preset's global batch."""
    cfg = load_config("vitb16_mocov3")
    assert cfg.train.batch_size_per_gpu * 64 == 4096
    ipe = cfg.train.iterations_per_epoch
    schedules = build_schedules(cfg.optim, ipe, 4096)
    objective_momentum = run_momentum_schedule(cfg)
    peak = 1.5e-4 * 4096 / 256
    for iteration in (0, 1, 40 * ipe - 1, 40 * ipe, 170 * ipe, 300 * ipe - 1):
        epoch = iteration / ipe
        if epoch < 40:
            lr = peak * epoch / 40
        else:
            lr = peak * 0.5 * (1 + math.cos(math.pi * (epoch - 40) / (300 - 40)))
        assert schedules.lr(iteration) == pytest.approx(lr, rel=1e-9, abs=1e-15)
        momentum = 1 - 0.5 * (1 + math.cos(math.pi * epoch / 300)) * (1 - 0.99)
        assert objective_momentum(iteration) == pytest.approx(momentum, abs=1e-12)
