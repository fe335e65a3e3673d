"""Each method's step against its authors' released code (issue 31, docs/faithfulness.md).

``tests/fixtures/released/<method>.safetensors`` holds one training step that the release itself computed:
its initial weights under dinolite's keys (``weights/``), the inputs (``inputs/``: views, masks), the loss and
its terms (``released/<name>``), every gradient before clipping (``released/grad/<key>``), and in its metadata
the release, its commit, the step's file:lines and the settings it ran with. The recording scripts ran the
release outside this repository (docs/faithfulness.md, "How the golden steps were recorded").

One harness serves every method: build the method's objective from its demo preset plus the fixture's
settings (model size, head widths, loss constants) and the options that select the released behaviour, load
the weights, run ``objective(batch, 0)`` and ``loss.backward()`` (the objective's own forward and backward,
not the training loop), and compare the loss, the terms and every gradient. Gradients are compared per
tensor: ``max |ours - released| <= grad_rtol * max |released| + grad_atol`` (the release computes in another
order, so rounding differs; ``grad_atol`` covers gradients that are 0 in exact arithmetic, such as a bias
followed by BatchNorm, whose values are rounding noise); the key sets must match, except the parameters a
case names with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from dinolite.config import Config, load_config
from dinolite.train.methods import get_method
from dinolite.train.objective import SSLObjective
from dinolite.train.optim import optimizer_for
from dinolite.train.schedules import TrainingSchedules
from dinolite.train.step import TrainingStep

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released"
TINY_VIT = re.compile(r"img (\d+), patch (\d+), width (\d+), depth (\d+), heads (\d+)")


@dataclass(frozen=True)
class Fixture:
    """A released step: its tensors by key and its settings (the metadata's ``settings`` JSON)."""

    name: str
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def scalar(self, key: str) -> float:
        if key not in self.tensors:
            raise KeyError(f"{self.name}.safetensors has no {key!r}; it has {sorted(self.section('released/'))[:8]}")
        return float(self.tensors[key])


def read_fixture(name: str) -> Fixture:
    path = FIXTURES / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"released golden step {path} is missing (docs/faithfulness.md says how it is made)")
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    return Fixture(name, tensors, json.loads(metadata["settings"]))


def backbone_overrides(settings: Mapping[str, Any]) -> list[str]:
    """The ViT the release ran: its own keys (SimMIM, I-JEPA, MSN) or, for the ResNet releases that ran a
    tiny timm ViT instead, the ``backbone`` description the recording wrote."""
    if "embed_dim" in settings:
        size = settings.get("img_size", settings.get("crop_size"))
        values = (size, settings["patch_size"], settings["embed_dim"], settings["depth"], settings["num_heads"])
    else:
        match = TINY_VIT.search(settings["backbone"])
        if match is None:
            raise ValueError(f"the fixture's settings.backbone {settings['backbone']!r} names no ViT shape")
        values = tuple(int(v) for v in match.groups())
    size, patch, width, depth, heads = values
    return [
        f"crops.global_crops_size={size}",
        f"student.patch_size={patch}",
        f"student.embed_dim={width}",
        f"student.depth={depth}",
        f"student.num_heads={heads}",
    ]


@dataclass(frozen=True)
class ReleasedOptimizer:
    """How dinolite's optimizer step reproduces the release's (``released/after/*``).

    Attributes:
        options: ``settings -> {optim key: value}``, the release's optimizer recipe as ``optim.*`` options.
        values: ``fixture -> (lr, weight decay)`` the release's step used (dinolite's schedules are tested on
            their own; the step runs at these constant values, which the groups then multiply).
        needed: option -> another value (dinolite's): with it instead, the comparison fails (each is checked).
        rtol, atol: ``max |ours - released| <= rtol * max |released - before| + atol + 2 eps max |released|``
            per tensor: the step's movement sets the scale (a gradient difference moves a parameter by lr times
            it), ``atol`` covers gradients that are rounding noise, the last term two float32 roundings of the
            parameter itself (``eps`` = 1.2e-7).
        noise_floor: AdamW's first step moves each element by about lr x sign(gradient); elements whose
            released gradient is below this floor are rounding noise whose sign may differ, and are held to
            ``2 lr`` (their step's size) instead.
    """

    options: Callable[[Mapping[str, Any]], dict[str, str]]
    values: Callable[[Fixture], tuple[float, float]]
    needed: Mapping[str, str]
    rtol: float
    atol: float
    noise_floor: float = 0.0


@dataclass(frozen=True)
class ReleasedStep:
    """How dinolite reproduces one fixture.

    Attributes:
        fixture: the fixture's name (``tests/fixtures/released/<fixture>.safetensors``).
        preset: the demo preset the objective starts from.
        overrides: ``settings -> overrides``: the release's head widths and loss constants, and the options
            that select the release's behaviour (the point of the test).
        inputs: batch key -> fixture key.
        collate: ``(cfg, fixture, inputs) -> batch`` where the method's own collate makes part of the batch
            from the views (the part an option changes), the fixture's ``inputs`` the rest.
        loss: the fixture key of the loss dinolite's objective computes.
        terms: dinolite's term name -> fixture key.
        zero: dinolite parameters the release does not have, loaded as zeros where that is the release's
            forward (a reason each).
        dinolite_only: parameters with a gradient here and none in the release (a reason each).
        release_only: gradients the fixture stores of parameters dinolite's objective does not have (keys
            outside ``student.``, a reason each).
        computed: release weights that dinolite computes instead of storing (a reason each): not loaded; a test
            checks dinolite's value against them.
        renamed: dinolite parameter -> the release's key of a tensor the fixture stores under ``*_released_only/``
            (its weight, gradient and value after the step), compared as dinolite's parameter.
        loss_atol, grad_rtol, grad_atol: the tolerances (loss absolute; gradients relative to each tensor's max
            plus an absolute floor).
        optimizer: the release's optimizer step (``None``: the parameters after the step are not compared).
    """

    fixture: str
    preset: str
    overrides: Callable[[Mapping[str, Any]], list[str]]
    inputs: Mapping[str, str]
    collate: Callable[[Config, Fixture, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    loss: str = "released/loss"
    terms: Mapping[str, str] = field(default_factory=dict)
    zero: Mapping[str, str] = field(default_factory=dict)
    dinolite_only: Mapping[str, str] = field(default_factory=dict)
    release_only: Mapping[str, str] = field(default_factory=dict)
    computed: Mapping[str, str] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)
    loss_atol: float = 1e-6
    grad_rtol: float = 2e-5
    grad_atol: float = 1e-7
    optimizer: ReleasedOptimizer | None = None


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
NO_LR_LAYERS = {"layerwise_decay": "1.0", "patch_embed_lr_mult": "1.0"}


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


def build(case: ReleasedStep, fixture: Fixture, extra: Sequence[str] = ()) -> tuple[SSLObjective, Config]:
    """The method's objective from its preset and the fixture's settings (plus ``extra`` overrides), with the
    release's weights loaded into the student (and into a target network's matching modules, as the releases
    start both alike)."""
    overrides = [*backbone_overrides(fixture.settings), *case.overrides(fixture.settings), *extra]
    cfg = load_config(case.preset, overrides)
    objective = get_method(cfg.train.method).build_objective(cfg)
    state = objective.state_dict()
    weights = {
        k: v
        for k, v in released_tensors(case, fixture, "weights").items()
        if k.startswith("student.") and k not in case.computed
    }
    unknown = sorted(set(weights) - set(state))
    if unknown:
        raise KeyError(f"{case.fixture}.safetensors weights {unknown[:5]} are not parameters of dinolite's objective")
    weights.update({key: torch.zeros_like(state[key]) for key in case.zero})
    for key, value in weights.items():
        for target in (key, "teacher." + key[len("student.") :]):
            if target in state:
                state[target] = value.clone()
    objective.load_state_dict(state)
    return objective.train(), cfg


def released_tensors(case: ReleasedStep, fixture: Fixture, section: str) -> dict[str, torch.Tensor]:
    """``fixture.section(section + "/")`` plus the ``section + "_released_only/"`` tensors the case renames."""
    tensors = fixture.section(f"{section}/")
    tensors.update({ours: fixture.tensors[f"{section}_released_only/{key}"] for ours, key in case.renamed.items()})
    return tensors


def fixture_batch(case: ReleasedStep, fixture: Fixture, cfg: Config) -> dict[str, torch.Tensor]:
    batch = {key: fixture.tensors[source] for key, source in case.inputs.items()}
    return case.collate(cfg, fixture, batch) if case.collate is not None else batch


def run_step(
    case: ReleasedStep, fixture: Fixture, extra: Sequence[str] = ()
) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    """Loss, terms and every student gradient of one forward and backward on the fixture's inputs (with
    ``extra`` overrides)."""
    torch.manual_seed(0)  # a method that draws numbers in its step draws them alike on every run
    objective, cfg = build(case, fixture, extra)
    batch = fixture_batch(case, fixture, cfg)
    output = objective(batch, 0)
    output.loss.backward()
    grads = {key: p.grad.detach() for key, p in objective.named_parameters() if p.grad is not None}
    return float(output.loss.detach()), {k: float(v.detach()) for k, v in output.terms.items()}, grads


def gradient_mismatches(case: ReleasedStep, released: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor]):
    """``(key, max abs difference, allowed)`` for every released gradient outside the tolerance."""
    bad = []
    for key, reference in sorted(released.items()):
        difference = float((ours[key].double() - reference.double()).abs().max())
        allowed = case.grad_rtol * float(reference.abs().max()) + case.grad_atol
        if difference > allowed:
            bad.append((key, difference, allowed))
    return bad


@pytest.fixture(scope="module", params=sorted(CASES))
def stepped(request: pytest.FixtureRequest) -> tuple[ReleasedStep, Fixture, tuple]:
    case = CASES[request.param]
    fixture = read_fixture(case.fixture)
    return case, fixture, run_step(case, fixture)


def test_loss_and_terms_equal_the_release(stepped) -> None:
    case, fixture, (loss, terms, _) = stepped
    assert loss == pytest.approx(fixture.scalar(case.loss), abs=case.loss_atol)
    for ours, key in case.terms.items():
        assert terms[ours] == pytest.approx(fixture.scalar(key), abs=case.loss_atol), ours


def test_every_gradient_equals_the_release(stepped) -> None:
    case, fixture, (_, _, grads) = stepped
    released = released_tensors(case, fixture, "released/grad")
    assert sorted(k for k in released if not k.startswith("student.")) == sorted(case.release_only)
    released = {k: v for k, v in released.items() if k.startswith("student.")}
    assert sorted(set(released) - set(grads)) == [], "parameters the release trains that get no gradient here"
    assert sorted(set(grads) - set(released)) == sorted(case.dinolite_only)
    assert gradient_mismatches(case, released, grads) == []


def test_the_released_ijepa_step_needs_the_cls_free_encoder_and_the_column_first_tables() -> None:
    """Each option of the I-JEPA case is necessary: with DINOv2's CLS token (attending in every block) or with
    row-first predictor tables, the loss and the gradients leave the tolerances the case holds."""
    fixture = read_fixture("ijepa")
    released = fixture.section("released/grad/")
    with_cls = dataclasses.replace(
        IJEPA_CASE,
        overrides=lambda settings: [*ijepa_overrides(settings), "student.cls_token=true"],
        # dinolite's column-first table (equal to the release's patch rows) with its zero CLS row in front
        computed={**IJEPA_CASE.computed, "student.backbone.pos_embed": "dinolite's table, with a CLS row"},
    )
    loss, _, grads = run_step(with_cls, fixture)
    assert set(grads) - set(released) == {"student.backbone.cls_token"}
    assert abs(loss - fixture.scalar("released/loss")) > 10 * IJEPA_CASE.loss_atol
    assert any(key.startswith("student.backbone.") for key, _, _ in gradient_mismatches(IJEPA_CASE, released, grads))
    loss, _, grads = run_step(IJEPA_CASE, fixture, ("student.sincos_order=row_first",))
    assert abs(loss - fixture.scalar("released/loss")) > 1e-3
    assert gradient_mismatches(IJEPA_CASE, released, grads)


def test_the_released_vicreg_step_needs_the_expander_without_a_last_bias() -> None:
    """With dinolite's expander (a last bias) the release's parameters are all there, loss and gradients alike,
    but dinolite trains a parameter the release does not have: its gradient is rounding noise (the loss cannot
    see it) and the key sets differ."""
    fixture = read_fixture("vicreg")
    loss, _, grads = run_step(VICREG_CASE, fixture, ("vicreg.projector_last_bias=true",))
    assert loss == pytest.approx(fixture.scalar("released/loss"), abs=VICREG_CASE.loss_atol)
    released = fixture.section("released/grad/")
    extra = sorted(set(grads) - {k for k in released if k.startswith("student.")})
    assert extra == ["student.projector.layers.fc2.bias"]
    assert float(grads[extra[0]].abs().max()) < 1e-5


def test_the_released_simmim_step_needs_the_shared_relative_position_bias() -> None:
    """With dinolite's learned absolute table instead (loaded as zeros: the first forward then carries no position
    either, so the loss is the release's) the release's relative bias table, whose gradient is not zero, has no
    parameter here, and dinolite's absolute table takes a gradient the release has no parameter for."""
    case, fixture = CASES["simmim"], read_fixture("simmim")
    absolute = dataclasses.replace(
        case,
        overrides=lambda settings: [*simmim_overrides(settings), "student.pos_embed=learned"],
        renamed={},
        zero={"student.backbone.pos_embed": "the release's first forward carries no position"},
    )
    loss, _, grads = run_step(absolute, fixture)
    released = released_tensors(case, fixture, "released/grad")
    assert loss == pytest.approx(fixture.scalar(case.loss), abs=case.loss_atol)
    assert float(released[SIMMIM_TABLE].norm()) > 1e-5
    assert sorted(set(released) - set(grads)) == [SIMMIM_TABLE]
    assert sorted(set(grads) - set(released)) == ["student.backbone.pos_embed"]


def test_column_first_sincos_tables_are_the_released_ijepa_tables() -> None:
    """``student.sincos_order=column_first`` gives the released encoder's and predictor's fixed tables exactly
    (the I-JEPA fixture stores both: the release's encoder has no CLS row; ``student.cls_token=false`` gives
    the same table without one)."""
    fixture = read_fixture("ijepa")
    settings = fixture.settings
    overrides = [
        *backbone_overrides(settings),
        f"ijepa.predictor_embed_dim={settings['pred_emb_dim']}",
        f"ijepa.predictor_num_heads={settings['predictor_num_heads']}",
        f"ijepa.predictor_depth={settings['pred_depth']}",
    ]
    released_encoder = fixture.tensors["weights/student.backbone.pos_embed"][0]
    released_predictor = fixture.tensors["weights/student.predictor.predictor_pos_embed"][0]
    for order, cls_token, equal in (
        ("column_first", True, True),
        ("column_first", False, True),
        ("row_first", False, False),
    ):
        cfg = load_config("demo_ijepa", [*overrides, f"student.sincos_order={order}", f"student.cls_token={cls_token}"])
        objective = get_method("ijepa").build_objective(cfg)
        encoder = objective.student["backbone"].pos_embed.detach()[0, int(cls_token) :]
        assert torch.equal(encoder, released_encoder) is equal, order
        assert torch.equal(objective.student["predictor"].position_table(), released_predictor) is equal, order


# -- the parameters after the release's optimizer step ----------------------------------------------------------


def run_optimizer_step(
    case: ReleasedStep, fixture: Fixture, instead: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Every student parameter after one :class:`TrainingStep` (objective, backward, clipping, the optimizer
    the ``optim`` section builds) on the fixture's inputs at the release's lr and weight decay; ``instead``
    replaces some of the release's optimizer options."""
    assert case.optimizer is not None
    torch.manual_seed(0)
    options = {**case.optimizer.options(fixture.settings), **(instead or {})}
    objective, cfg = build(case, fixture, [f"optim.{key}={value}" for key, value in options.items()])
    lr, weight_decay = case.optimizer.values(fixture)
    schedules = TrainingSchedules(lr=lambda _: lr, weight_decay=lambda _: weight_decay, peak_lr=lr)
    step = TrainingStep(
        objective,
        optimizer_for(objective.student, cfg.optim),
        schedules,
        cfg.optim.clip_grad,
        clip_scope=cfg.optim.clip_grad_scope,
        unclipped=tuple(cfg.optim.unclipped_modules),
    )
    step(fixture_batch(case, fixture, cfg), 0)
    return {key: p.detach() for key, p in objective.named_parameters() if key.startswith("student.")}


def largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def after_step_mismatches(case: ReleasedStep, fixture: Fixture, ours: Mapping[str, torch.Tensor]) -> list[tuple]:
    """``(key, max abs difference, allowed)`` for every released parameter after the step outside the tolerance
    (:class:`ReleasedOptimizer`)."""
    assert case.optimizer is not None
    lr, _ = case.optimizer.values(fixture)
    before, grads = released_tensors(case, fixture, "weights"), released_tensors(case, fixture, "released/grad")
    bad = []
    for key, released in sorted(released_tensors(case, fixture, "released/after").items()):
        if not key.startswith("student.") or key in case.dinolite_only:
            continue
        released, mine = released.double(), ours[key].double()
        movement = float((released - before[key].double()).abs().max())
        rounding = 2 * torch.finfo(torch.float32).eps * float(released.abs().max())
        allowed = case.optimizer.rtol * movement + case.optimizer.atol + rounding
        noise = grads[key].abs() < case.optimizer.noise_floor
        difference, noise_difference = (largest((mine - released).abs()[where]) for where in (~noise, noise))
        if difference > allowed or noise_difference > 2 * lr * (1 + 1e-3):
            bad.append((key, difference, allowed, noise_difference))
    return bad


OPTIMIZER_CASES = sorted(name for name, case in CASES.items() if case.optimizer is not None)


@pytest.mark.parametrize("name", OPTIMIZER_CASES)
def test_every_parameter_after_the_optimizer_step_equals_the_release(name: str) -> None:
    """dinolite's step with the release's optimizer options gives every parameter the release's step gives
    (the same key set, less the parameters the case names as dinolite's only)."""
    case, fixture = CASES[name], read_fixture(CASES[name].fixture)
    ours = run_optimizer_step(case, fixture)
    released = {k for k in released_tensors(case, fixture, "released/after") if k.startswith("student.")}
    assert sorted(released - set(ours)) == []
    assert after_step_mismatches(case, fixture, ours) == []


@pytest.mark.parametrize(
    ("name", "option"), [(name, option) for name in OPTIMIZER_CASES for option in CASES[name].optimizer.needed]
)
def test_the_step_needs_each_released_optimizer_option(name: str, option: str) -> None:
    """With dinolite's value of one of the release's optimizer options the parameters after the step differ
    from the release's: each option in ``needed`` is one the release's step depends on."""
    case, fixture = CASES[name], read_fixture(CASES[name].fixture)
    instead = {option: case.optimizer.needed[option]}
    assert after_step_mismatches(case, fixture, run_optimizer_step(case, fixture, instead)) != []
