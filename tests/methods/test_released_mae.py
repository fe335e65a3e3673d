"""MAE's step against the released code (facebookresearch/mae, docs/faithfulness.md "MAE").

``tests/fixtures/released/mae.safetensors`` holds one step that the release computed on a tiny ViT (32 px,
patch 4, width 64, depth 2; decoder width 32, depth 2): its weights under dinolite's keys, the images and the
uniform noise its ``random_masking`` drew, the loss with normalised-pixel targets (and, on the same prediction,
with raw pixels), every gradient, and every parameter after main_pretrain.py's AdamW step at the warm-up's lr.
The recording script ran the release outside this repository (docs/faithfulness.md says how). The harness is
tests/methods/test_released_steps.py's: build the objective from ``demo_mae`` plus the fixture's settings, load
the weights, run the objective's forward and backward (and, for the parameters after the step, dinolite's
:class:`TrainingStep` with the release's optimizer options).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from dinolite.config import Config, load_config
from dinolite.data.masked_views import mae_shuffle
from dinolite.losses import MAELoss
from dinolite.train.methods import get_method
from dinolite.train.schedules import build_schedules
from tests.methods.released_harness import (
    NO_LR_LAYERS,
    Fixture,
    ReleasedOptimizer,
    ReleasedStep,
    after_step_mismatches,
    backbone_overrides,
    build,
    gradient_mismatches,
    read_fixture,
    run_optimizer_step,
    run_step,
)


def mae_overrides(settings: Mapping[str, Any]) -> list[str]:
    """models_mae.py's encoder (fixed column-first sine-cosine positions, no LayerScale, no stochastic depth)
    and decoder sizes."""
    return [
        "student.pos_embed=sincos",
        "student.sincos_order=column_first",
        "student.layerscale=0.0",
        "student.drop_path_rate=0.0",
        f"mae.mask_ratio={settings['mask_ratio']}",
        f"mae.norm_pix_loss={str(settings['norm_pix_loss']).lower()}",
        f"mae.decoder_embed_dim={settings['decoder_embed_dim']}",
        f"mae.decoder_depth={settings['decoder_depth']}",
        f"mae.decoder_num_heads={settings['decoder_num_heads']}",
    ]


def masks_from_noise(cfg: Config, fixture: Fixture, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's masking from its own noise, through dinolite's :func:`mae_shuffle`."""
    ids_keep, ids_restore = mae_shuffle(batch.pop("noise"), cfg.mae.mask_ratio)
    return {**batch, "ids_keep": ids_keep, "ids_restore": ids_restore}


def mae_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """main_pretrain.py:179-180: AdamW betas (0.9, 0.95) over timm's ``add_weight_decay`` groups (no decay on
    1-D parameters and biases; cls and mask tokens decayed); engine_pretrain.py: no gradient clipping."""
    return {**NO_LR_LAYERS, "adamw_beta2": "0.95", "decay_rule": "non_1d", "no_decay": "[]", "clip_grad": "0"}


MAE_CASE = ReleasedStep(
    "mae",
    "demo_mae",
    mae_overrides,
    {"images": "inputs/images", "noise": "inputs/noise"},
    collate=masks_from_noise,
    # student.backbone.mask_token (SimMIM's) has no counterpart and gets no gradient: the encoder drops patches
    computed={"student.backbone.pos_embed": "the encoder's fixed sine-cosine table (test_the_position_tables...)"},
    # measured: the loss, every gradient and every parameter after the step bit-identical to the release (same
    # torch, same CPU); the tolerances leave room for another summation order only
    loss_atol=1e-7,
    grad_rtol=5e-6,
    grad_atol=1e-9,
    optimizer=ReleasedOptimizer(
        mae_optimizer,
        lambda fixture: (fixture.scalar("released/lr"), fixture.scalar("released/weight_decay")),
        # AdamW's first step is scale-free (m / sqrt(v) = sign of the gradient whatever the betas): beta2 shows
        # only from the second step on, so it is not in this list
        needed={"decay_rule": "dinolite"},
        rtol=1e-4,
        atol=1e-8,
        noise_floor=1e-4,
    ),
)


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return read_fixture("mae")


@pytest.fixture(scope="module")
def stepped(fixture: Fixture) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    return run_step(MAE_CASE, fixture)


def test_the_masking_from_the_releases_noise_is_the_releases_mask(fixture: Fixture) -> None:
    _, ids_restore = mae_shuffle(fixture.tensors["inputs/noise"], fixture.settings["mask_ratio"])
    kept = int(fixture.tensors["inputs/noise"].shape[1] * (1 - fixture.settings["mask_ratio"]))
    assert torch.equal((ids_restore >= kept).float(), fixture.tensors["released/mask"])


def test_the_loss_equals_the_release(fixture: Fixture, stepped) -> None:
    loss, terms, _ = stepped
    assert loss == pytest.approx(fixture.scalar("released/loss"), abs=MAE_CASE.loss_atol)
    assert terms["mae_mse"] == pytest.approx(loss)


def test_the_raw_pixel_loss_equals_the_release_on_its_prediction(fixture: Fixture) -> None:
    """``norm_pix_loss=False`` on the release's own prediction: MAELoss alone, on raw pixels."""
    loss = MAELoss(fixture.settings["patch_size"], norm_pix_loss=False)(
        fixture.tensors["released/prediction"], fixture.tensors["inputs/images"], fixture.tensors["released/mask"]
    )
    assert float(loss) == pytest.approx(fixture.scalar("released/loss_raw_pixels"), abs=1e-6)
    normalised = MAELoss(fixture.settings["patch_size"], norm_pix_loss=True)(
        fixture.tensors["released/prediction"], fixture.tensors["inputs/images"], fixture.tensors["released/mask"]
    )
    assert float(normalised) == pytest.approx(fixture.scalar("released/loss"), abs=1e-6)


def test_every_gradient_equals_the_release(fixture: Fixture, stepped) -> None:
    _, _, grads = stepped
    released = fixture.section("released/grad/")
    assert sorted(set(released) - set(grads)) == []
    assert sorted(set(grads) - set(released)) == sorted(MAE_CASE.dinolite_only)
    assert gradient_mismatches(MAE_CASE, released, grads) == []


def test_every_parameter_after_the_optimizer_step_equals_the_release(fixture: Fixture) -> None:
    ours = run_optimizer_step(MAE_CASE, fixture)
    released = set(fixture.section("released/after/"))
    assert sorted(released - set(ours)) == []
    assert after_step_mismatches(MAE_CASE, fixture, ours) == []


@pytest.mark.parametrize("option", sorted(MAE_CASE.optimizer.needed))
def test_the_step_needs_each_released_optimizer_option(fixture: Fixture, option: str) -> None:
    instead = {option: MAE_CASE.optimizer.needed[option]}
    assert after_step_mismatches(MAE_CASE, fixture, run_optimizer_step(MAE_CASE, fixture, instead)) != []


def test_the_position_tables_are_the_releases_fixed_tables(fixture: Fixture) -> None:
    """Encoder and decoder tables (zero CLS row, column-first sine-cosine) equal the release's; row-first not."""
    objective, _ = build(MAE_CASE, fixture)
    released_encoder = fixture.tensors["weights_released_only/pos_embed"]
    released_decoder = fixture.tensors["weights_released_only/decoder_pos_embed"][0]
    torch.testing.assert_close(objective.student["backbone"].pos_embed.detach(), released_encoder, rtol=0, atol=1e-7)
    torch.testing.assert_close(objective.student["decoder"].position_table(), released_decoder, rtol=0, atol=1e-7)
    cfg = load_config("demo_mae", [*backbone_overrides(fixture.settings), *mae_overrides(fixture.settings)])
    cfg_row = load_config(
        "demo_mae",
        [*backbone_overrides(fixture.settings), *mae_overrides(fixture.settings), "student.sincos_order=row_first"],
    )
    assert cfg.student.sincos_order == "column_first"
    row_first = get_method("mae").build_objective(cfg_row)
    assert not torch.allclose(row_first.student["decoder"].position_table(), released_decoder)


# facebookresearch/mae efb2a80: PRETRAIN.md's command line, main_pretrain.py, models_mae.py
VITB16_RELEASED = {
    "mae.mask_ratio": 0.75,  # PRETRAIN.md --mask_ratio
    "mae.norm_pix_loss": True,  # PRETRAIN.md --norm_pix_loss
    "mae.decoder_embed_dim": 512,  # mae_vit_base_patch16_dec512d8b
    "mae.decoder_depth": 8,
    "mae.decoder_num_heads": 16,
    "student.arch": "vit_base",  # embed_dim 768, depth 12, heads 12
    "student.patch_size": 16,
    "student.layerscale": 0.0,
    "student.drop_path_rate": 0.0,
    "student.pos_embed": "sincos",
    "student.sincos_order": "column_first",
    "student.weight_init": "mae",
    "optim.epochs": 800,  # PRETRAIN.md --epochs
    "optim.warmup_epochs": 40,  # PRETRAIN.md --warmup_epochs
    "optim.weight_decay": 0.05,  # PRETRAIN.md --weight_decay
    "optim.weight_decay_end": 0.05,
    "optim.adamw_beta1": 0.9,  # main_pretrain.py:180
    "optim.adamw_beta2": 0.95,
    "optim.decay_rule": "non_1d",  # main_pretrain.py:179, timm add_weight_decay
    "optim.clip_grad": 0.0,
    "optim.min_lr": 0.0,  # main_pretrain.py --min_lr
    "crops.global_crops_size": 224,
    "crops.global_crops_scale": [0.2, 1.0],  # main_pretrain.py:124
    "crops.horizontal_flip_p": 0.5,
}


def test_vitb16_mae_takes_the_released_values() -> None:
    cfg = load_config("vitb16_mae")
    taken = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in VITB16_RELEASED}
    assert taken == VITB16_RELEASED


def test_vitb16_mae_lr_is_the_released_warmup_and_half_cosine_at_batch_4096() -> None:
    """util/lr_sched.py on the fractional epoch: lr = blr * 4096 / 256 * epoch / 40 in the warm-up, then
    half a cosine to 0 at epoch 800; the global batch is 64 GPUs x 64."""
    cfg = load_config("vitb16_mae")
    ipe, peak = cfg.train.iterations_per_epoch, 1.5e-4 * 4096 / 256
    schedules = build_schedules(cfg.optim, ipe, 64 * cfg.train.batch_size_per_gpu)
    for epoch in (0.0, 0.5, 20.0, 39.5, 40.0, 100.25, 420.0, 799.5):
        if epoch < 40:
            released = peak * epoch / 40
        else:
            released = peak * 0.5 * (1 + math.cos(math.pi * (epoch - 40) / (800 - 40)))
        assert schedules.lr(round(epoch * ipe)) == pytest.approx(released, rel=1e-6, abs=1e-12), epoch
