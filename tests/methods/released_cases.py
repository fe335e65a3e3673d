"""The released steps dinolite reproduces, one :class:`ReleasedStep` per fixture (docs/faithfulness.md).

Each case names the method's demo preset and the overrides that select the release's behaviour (the point of
the comparison), with a reason for every parameter one side has and the other does not, and the tolerances
measured for it. ``test_released_steps.py`` runs every case through the same tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dinolite.config import Config
from dinolite.train.methods import get_method
from tests.methods.released_harness import NO_LR_LAYERS, Fixture, ReleasedOptimizer, ReleasedStep, backbone_overrides


def simsiam_overrides(settings: Mapping[str, Any]) -> list[str]:
    """main_simsiam.py's builder: projector 3 x (width of the backbone), last BatchNorm without affine and
    no bias; predictor 2 layers through ``pred_dim``."""
    width = backbone_overrides(settings)[2].split("=")[1]
    return [
        "joint_embedding.projector_layers=3",
        f"joint_embedding.projector_hidden_dim={width}",
        f"joint_embedding.projector_out_dim={settings['dim']}",
        "joint_embedding.projector_last_bn=true",
        "joint_embedding.predictor_layers=2",
        f"joint_embedding.predictor_hidden_dim={settings['pred_dim']}",
    ]


SIMMIM_TABLE = "student.backbone.rel_pos_bias.relative_position_bias_table"


def simmim_overrides(settings: Mapping[str, Any]) -> list[str]:
    """The release's ViT switches (use_ape false, use_shared_rpb true: no absolute table, one relative position
    bias shared by the blocks), LayerScale and masks."""
    assert settings["use_shared_rpb"] and not settings["use_ape"] and not settings["use_rpb"]
    return [
        "student.pos_embed=shared_rel_pos_bias",
        f"student.layerscale={settings['init_values']}",
        f"simmim.mask_patch_size={settings['mask_patch_size']}",
        f"simmim.mask_ratio={settings['mask_ratio']}",
    ]


def directclr_overrides(settings: Mapping[str, Any]) -> list[str]:
    """``--mode directclr --dim``: InfoNCE on the first ``dim`` features, the release's negatives."""
    return [
        f"joint_embedding.directclr_d0={settings['dim']}",
        f"joint_embedding.temperature={settings['temperature']}",
        "directclr.negatives=cross_view",
    ]


def barlow_twins_overrides(settings: Mapping[str, Any]) -> list[str]:
    """``--projector a-b-c`` (Linear-BN-ReLU between, no last bias), ``--lambd``, the release's BatchNorm."""
    widths = settings["projector"].split("-")
    return [
        f"joint_embedding.projector_layers={len(widths)}",
        f"joint_embedding.projector_hidden_dim={widths[0]}",
        f"joint_embedding.projector_out_dim={widths[-1]}",
        "joint_embedding.projector_last_bn=false",
        f"joint_embedding.lambda_offdiag={settings['lambd']}",
        "barlow_twins.normalization=batchnorm",
        "barlow_twins.projector_last_bias=false",
    ]


def vicreg_overrides(settings: Mapping[str, Any]) -> list[str]:
    """``--mlp a-b-c`` (Linear-BN-ReLU between, no last bias: main_vicreg.py:223-232) and the three coefficients."""
    widths = settings["mlp"].split("-")
    return [
        f"joint_embedding.projector_layers={len(widths)}",
        f"joint_embedding.projector_hidden_dim={widths[0]}",
        f"joint_embedding.projector_out_dim={widths[-1]}",
        "joint_embedding.projector_last_bn=false",
        f"vicreg.invariance_weight={settings['sim_coeff']}",
        f"vicreg.variance_weight={settings['std_coeff']}",
        f"vicreg.covariance_weight={settings['cov_coeff']}",
        "vicreg.projector_last_bias=false",
    ]


def msn_overrides(settings: Mapping[str, Any]) -> list[str]:
    """msn_vits16.yaml at the fixture's size: ``rand_views`` anchors and ``focal_views`` focal views, Sinkhorn
    on, the release's label smoothing, entropy weight and sharpening ramp, and the release's behaviour: focal
    views keep every patch, the head's BatchNorm per view size, one floor()-sized patch subset per batch,
    exact resampling of the position table for the focal views (src/deit.py:291-305)."""
    assert settings["use_sinkhorn"] and settings["use_bn"]
    return [
        f"crops.global_crops_size={settings['rand_size']}",
        f"crops.local_crops_size={settings['focal_size']}",
        f"crops.local_crops_number={settings['focal_views']}",
        f"msn.num_prototypes={settings['num_proto']}",
        f"msn.hidden_dim={settings['hidden_dim']}",
        f"msn.output_dim={settings['output_dim']}",
        f"msn.mask_ratio={settings['patch_drop']}",
        f"msn.temperature={settings['temperature']}",
        f"msn.sharpen_temperature={settings['start_sharpen']}",
        f"msn.me_max={str(settings['me_max']).lower()}",
        f"msn.me_max_weight={settings['memax_weight']}",
        "msn.use_sinkhorn=true",
        "msn.focal_patch_drop=false",
        "msn.head_bn_groups=per_view_size",
        "msn.head_bn=global",  # one process: the same function as per_rank (SyncBatchNorm on 1 GPU)
        f"msn.anchor_views={settings['rand_views']}",
        f"msn.label_smoothing={settings['label_smoothing']}",
        f"msn.entropy_weight={settings['ent_weight'] if settings['use_ent'] else 0.0}",
        f"msn.final_sharpen_temperature={settings['final_sharpen']}",
        "msn.sharpen_horizon=1.25",
        "msn.patch_drop_per=batch",
        "msn.patch_drop_rounding=floor",
        "student.interpolate_offset=0",
    ]


def ijepa_overrides(settings: Mapping[str, Any]) -> list[str]:
    """The release's predictor and loss, and its encoder layout: no CLS token (src/models/vision_transformer.py
    VisionTransformer has none), the column code first in the fixed tables (the fixture's weights are the
    release's, so the initialisation options play no part here)."""
    assert settings["mask"]["nenc"] == 1 and settings["mask"]["npred"] == 4
    return [
        f"ijepa.predictor_embed_dim={settings['pred_emb_dim']}",
        f"ijepa.predictor_num_heads={settings['predictor_num_heads']}",
        f"ijepa.predictor_depth={settings['pred_depth']}",
        f"ijepa.loss={settings['loss']}",
        "student.cls_token=false",
        "student.sincos_order=column_first",
    ]


def msn_collate(cfg: Config, fixture: Fixture, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MSN's collate on the fixture's views (so ``msn.focal_patch_drop`` decides the focal patches), then the
    release's anchor patch permutation, which is an input of its step (one per batch, floor of the kept count)."""
    views = inputs["focal_views"].shape[0] // inputs["anchor_views"].shape[0]
    samples = [
        {
            "global_crops": [inputs["target_views"][i], inputs["anchor_views"][i]],
            "local_crops": list(inputs["focal_views"].unflatten(0, (views, -1))[:, i]),
        }
        for i in range(inputs["anchor_views"].shape[0])
    ]
    batch = get_method("msn").build_collate(cfg)(samples, generator=torch.Generator().manual_seed(0))
    # msn.patch_drop_per=batch / patch_drop_rounding=floor draw the release's kind of mask: one subset of the
    # release's size for every anchor; the draw itself is the release's
    assert batch["anchor_keep"].shape == inputs["anchor_keep"].shape
    assert bool((batch["anchor_keep"] == batch["anchor_keep"][0]).all())
    batch["anchor_keep"] = inputs["anchor_keep"]
    return batch


# The releases' optimizer steps as optim options (docs/faithfulness.md). Every recipe runs without layer-wise lr
# decay or a patch-embedding lr multiplier (no release has them); dinolite's schedules are tested on their own.


def simsiam_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """main_simsiam.py:193-201: SGD, momentum 0.9, weight decay on every parameter, the predictor at init_lr."""
    return {
        **NO_LR_LAYERS,
        "optimizer": "sgd",
        "momentum": str(settings["momentum"]),
        "decay_rule": "all",
        "fixed_lr_modules": "[predictor]",
        "clip_grad": "0",
    }


def lars_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """Barlow Twins main.py:90-101, 224-263 / DirectCLR main.py:85-87, utils.py:63-102: LARS, momentum 0.9,
    eta 0.001; 1-D parameters neither decayed nor adapted; no clipping."""
    return {
        **NO_LR_LAYERS,
        "optimizer": "lars",
        "momentum": "0.9",
        "lars_eta": "0.001",
        "lars_exclude_1d": "true",
        "decay_rule": "non_1d",
        "clip_grad": "0",
    }


def barlow_twins_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """LARS as above, 1-D parameters at learning_rate_biases / learning_rate_weights of the lr (main.py:167-168)."""
    ratio = settings["learning_rate_biases"] / settings["learning_rate_weights"]
    return {**lars_optimizer(settings), "lr_1d_mult": repr(ratio)}


def simmim_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """optimizer.py:21-66: AdamW; no decay on 1-D parameters, biases, pos_embed and cls_token
    (vision_transformer.py:297-299; the mask token is decayed); one clip norm over the model
    (main_simmim.py:166-167)."""
    return {
        **NO_LR_LAYERS,
        "decay_rule": "non_1d",
        "no_decay": "[backbone.cls_token,backbone.pos_embed]",
        "clip_grad_scope": "joint",
        "clip_grad": str(settings["clip_grad"]),
    }


def msn_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """msn_train.py:530-545: AdamW; no decay on biases, 'bn' and 1-D parameters nor on the prototypes (tokens
    decayed); msn_train.py:369-370: one clip norm over the encoder and head, the prototypes unclipped."""
    return {
        **NO_LR_LAYERS,
        "decay_rule": "non_1d",
        "no_decay": "[prototypes]",
        "clip_grad_scope": "joint",
        "unclipped_modules": "[prototypes]",
        "clip_grad": str(settings["clip_grad"]),
    }


def ijepa_optimizer(settings: Mapping[str, Any]) -> dict[str, str]:
    """I-JEPA helper.py:121-139: AdamW; no decay on biases and 1-D parameters (the predictor's mask token is
    decayed); no clipping (train.py:321-328). Its warm-up start (``optim.warmup_start_lr=2e-4``) is a schedule,
    tested with the schedules."""
    return {**NO_LR_LAYERS, "decay_rule": "non_1d", "clip_grad": "0"}


def lr_and_setting_decay(fixture: Fixture) -> tuple[float, float]:
    return fixture.scalar("released/lr"), float(fixture.settings["weight_decay"])


IJEPA_CASE = ReleasedStep(
    "ijepa",
    "demo_ijepa",
    ijepa_overrides,
    {"images": "inputs/images", "context_idx": "inputs/context_idx", "target_idx": "inputs/target_idx"},
    computed={
        "student.predictor.predictor_pos_embed": "the predictor's fixed sine-cosine table, computed from the grid "
        "(test_column_first_sincos_tables_are_the_released_ijepa_tables)"
    },
    # measured: the loss bit-identical (0.45985138), every gradient within 1.2e-6 of its tensor's largest value
    loss_atol=1e-7,
    grad_rtol=5e-6,
    grad_atol=1e-9,
    optimizer=ReleasedOptimizer(
        ijepa_optimizer,
        lambda fixture: (fixture.scalar("released/lr"), fixture.scalar("released/weight_decay")),
        needed={"decay_rule": "dinolite"},
        rtol=1e-4,
        atol=1e-8,
        noise_floor=1e-4,
    ),
)

VICREG_HIDDEN_BIAS = (
    "the release's hidden expander Linears have a bias; the BatchNorm after each removes it (exact gradient 0)"
)
VICREG_CASE = ReleasedStep(
    "vicreg",
    "demo_vicreg",
    vicreg_overrides,
    {"collated_global_crops": "inputs/collated_global_crops"},
    terms={
        "vicreg_invariance": "released/invariance",
        "vicreg_variance": "released/variance",
        "vicreg_covariance": "released/covariance",
    },
    release_only={
        "released_only.projector.fc0.bias": VICREG_HIDDEN_BIAS,
        "released_only.projector.fc1.bias": VICREG_HIDDEN_BIAS,
    },
    # measured: the loss equal (18.695051), the terms within 9e-7; gradients within 2.4e-5 of each tensor's
    # largest value (backbone.norm.bias, exact gradient 0, holds rounding noise)
    grad_rtol=5e-5,
    grad_atol=2e-5,
    optimizer=ReleasedOptimizer(
        lars_optimizer,
        lambda fixture: (fixture.scalar("released/lr"), float(fixture.settings["weight_decay"])),
        needed={"optimizer": "adamw", "lars_exclude_1d": "false", "clip_grad": "3.0"},
        rtol=5e-5,
        # backbone.norm.bias: exact gradient 0 (the expander's first BatchNorm removes a shift), rounding noise of
        # ~7e-7 that LARS moves unadapted at the full lr 1.6 (Barlow Twins' biases take 0.0048 / 0.2 of it)
        atol=5e-6,
    ),
)

CASES: dict[str, ReleasedStep] = {
    "ijepa": IJEPA_CASE,
    "simsiam": ReleasedStep(
        "simsiam",
        "demo_simsiam",
        simsiam_overrides,
        {"collated_global_crops": "inputs/collated_global_crops"},
        optimizer=ReleasedOptimizer(
            simsiam_optimizer,
            lr_and_setting_decay,
            # the release's fixed predictor lr equals the scheduled lr at epoch 0: optim.fixed_lr_modules is checked
            # in tests/train/test_optim.py instead
            needed={"optimizer": "adamw", "decay_rule": "dinolite", "clip_grad": "3.0"},
            rtol=2e-5,
            atol=1e-8,
        ),
    ),
    "barlow_twins": ReleasedStep(
        "barlow_twins",
        "demo_barlow_twins",
        barlow_twins_overrides,
        {"collated_global_crops": "inputs/collated_global_crops"},
        # gradients reach 50 here (the released loss is 25.9): rounding differs by up to 1.3e-5 of a tensor's
        # largest value, and backbone.norm.bias, whose exact gradient is 0 (the projector's first BatchNorm
        # removes a shift), holds noise of 1e-5
        grad_rtol=5e-5,
        grad_atol=2e-5,
        optimizer=ReleasedOptimizer(
            barlow_twins_optimizer,
            lambda fixture: (fixture.scalar("released/lr_weights"), float(fixture.settings["weight_decay"])),
            # decay_rule: weight decay 1e-6 against LARS's trust ratio moves the tokens by less than a rounding
            needed={"optimizer": "adamw", "lars_exclude_1d": "false", "lr_1d_mult": "1.0", "clip_grad": "3.0"},
            rtol=5e-5,
            atol=1e-6,
        ),
    ),
    "vicreg": VICREG_CASE,
    "directclr": ReleasedStep(
        "directclr",
        "demo_directclr",
        directclr_overrides,
        {"collated_global_crops": "inputs/collated_global_crops"},
        # released/loss adds the online probe's cross-entropy on the detached features (no backbone gradient);
        # dinolite runs its probes beside training (evaluation.online_*), so its loss is the InfoNCE alone
        loss="released/directclr_infonce",
        release_only={
            "released_only.online_head.weight": "the release's online linear probe (detached features)",
            "released_only.online_head.bias": "the release's online linear probe (detached features)",
        },
        optimizer=ReleasedOptimizer(
            lars_optimizer,
            lr_and_setting_decay,
            needed={"optimizer": "adamw", "lars_exclude_1d": "false", "clip_grad": "3.0"},
            rtol=5e-5,
            atol=1e-6,
        ),
    ),
    "msn": ReleasedStep(
        "msn",
        "demo_msn",
        msn_overrides,
        {
            "target_views": "inputs/target_views",
            "anchor_views": "inputs/anchor_views",
            "focal_views": "inputs/focal_views",
            "anchor_keep": "inputs/anchor_keep",
        },
        collate=msn_collate,
        terms={"msn_ce": "released/msn_ce", "me_max": "released/me_max"},
        # the biases before the head's BatchNorms (projector.mlp.0 / mlp.3, backbone.norm) have an exact gradient
        # of 0 and hold rounding noise up to 1.1e-6; the rest differ by up to 1.8e-5 of a tensor's largest value
        grad_rtol=5e-5,
        grad_atol=2e-6,
        optimizer=ReleasedOptimizer(
            msn_optimizer,
            lambda fixture: (fixture.scalar("released/lr"), fixture.scalar("released/weight_decay")),
            # AdamW's first step is scale-free: the clipping options change it by about one float32 rounding only
            needed={"decay_rule": "dinolite", "no_decay": "[]"},
            rtol=1e-4,
            atol=1e-8,
            noise_floor=1e-4,
        ),
    ),
    "simmim": ReleasedStep(
        "simmim",
        "demo_simmim",
        simmim_overrides,
        {"images": "inputs/images", "masks": "inputs/masks"},
        # student.pos_embed=shared_rel_pos_bias (simmim_overrides): the release's table, under dinolite's key
        renamed={SIMMIM_TABLE: "encoder.rel_pos_bias.relative_position_bias_table"},
        optimizer=ReleasedOptimizer(
            simmim_optimizer,
            lr_and_setting_decay,
            # at the first step's lr (2e-6) decay moves a parameter by less than one float32 rounding, and AdamW's
            # first step is scale-free (clipping): no option is visible in this step
            needed={},
            rtol=1e-4,
            atol=1e-10,
            noise_floor=1e-4,
        ),
    ),
}

# The cases whose fixture also holds the parameters after the release's optimizer step.
OPTIMIZER_CASES = sorted(name for name, case in CASES.items() if case.optimizer is not None)
