"""MSN: match the prototype assignment of a masked anchor view to that of the unmasked target view.

Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning" (Sec. 3). Per image: a
target view, ``msn.anchor_views`` anchor views of the same size and ``crops.local_crops_number`` small
focal anchor views (:class:`dinolite.data.views.MultiViewAugmentation`); every anchor drops
``msn.mask_ratio`` of its patches, which the student ViT never encodes (``keep_indices``). Student =
backbone + projection head + learnable prototypes; the target network is an EMA of backbone + projection
head (the prototypes are shared, used without gradient on the target side; its momentum is the shared
``ema`` section). The loss (:class:`dinolite.losses.MSNLoss`) is the cross-entropy between the sharpened
target assignment and each anchor's assignment, plus ME-MAX over the global batch. Switches
``msn.sharpen`` / ``msn.me_max`` turn off each collapse-preventing part; the watchdog's defaults below flag
the collapse each one then produces. The target encoder is evaluated. Every departure from the released
code is a switch of the ``msn`` section (docs/faithfulness.md, "MSN"); ``vitb16_msn`` sets the release's.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from dinolite.config import Config, ConfigError, ConfigSection, check_choices, check_ranges
from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import collate_msn
from dinolite.data.masked_views import PATCH_DROP_PER, PATCH_DROP_ROUNDING
from dinolite.data.views import MultiViewAugmentation, blur_kernel_for
from dinolite.losses import MSNLoss
from dinolite.models.masked_heads import HEAD_BN, MSNProjectionHead, Prototypes
from dinolite.monitor.collapse_rules import one_prototype, uniform_output
from dinolite.train.ema import ema_update, run_momentum_schedule
from dinolite.train.methods.masked_common import (
    checked,
    embed_dim,
    flops_record,
    vit_macs,
)
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone
from dinolite.train.schedules import LinearSchedule, Schedule, stretched_iters


@dataclass
class MSNConfig:
    """MSN's section (``train.method: msn``). Defaults: the released msn_vits16.yaml. Views: the global crops
    (``crops.global_crops_*``) for the target and the anchor, the local crops for the focal anchors; the
    EMA target follows the shared ``ema`` section."""

    mask_ratio: float = 0.15  # fraction of each anchor's patches dropped (released config: patch_drop)
    num_prototypes: int = 1024  # K, the learnable prototypes
    hidden_dim: int = 2048  # projection head width
    output_dim: int = 256  # projection head output (the prototypes' dimension)
    use_bn: bool = True  # BatchNorm in the projection head
    temperature: float = 0.1  # anchor softmax temperature tau
    sharpen_temperature: float = 0.25  # target sharpening T (targets use tau * T)
    sharpen: bool = True  # false: T = 1 (the uniform-collapse ablation)
    me_max: bool = True  # false: no mean-entropy maximisation (the one-prototype-collapse ablation)
    me_max_weight: float = 1.0  # weight of the ME-MAX term
    # Sinkhorn-balanced targets: on, as the released config ([cfg]:11) and both presets; false is the plain
    # sharpened softmax (the collapse ablations turn it off with msn.me_max=false)
    use_sinkhorn: bool = True
    # Released behaviour, one switch each (docs/faithfulness.md, MSN; facebookresearch/msn 4388dc1):
    # true: the focal views drop msn.mask_ratio of their patches too. false: they keep every patch, as the
    # release does (src/deit.py:221-229 drops patches for the first view size only, resetting patch_drop at 228)
    focal_patch_drop: bool = True
    # joint: one projection-head call on anchors and focal views together (one set of BatchNorm statistics).
    # per_view_size: one call per view size, each with its own batch statistics, as the release runs the head
    # inside each view size's forward (src/deit.py:221-229, the head at 263)
    head_bn_groups: str = "joint"
    # per_rank: the head's BatchNorm takes each rank's own batch statistics. global: the moments are all-reduced
    # over the ranks (GlobalBatchNorm1d, any backend), as the release's SyncBatchNorm on student and target
    # (src/msn_train.py:176-178); with head_bn_groups=per_view_size, each view size's moments separately
    head_bn: str = "per_rank"
    # image: each anchor drops its own random patches (the paper's random masking). batch: one subset for every
    # anchor of the batch and one for the focal views, as the release draws one permutation per forward
    # (src/deit.py:253)
    patch_drop_per: str = "image"
    # round | floor (the release, src/deit.py:252) of (1 - mask_ratio) x patches: 167 vs 166 at ViT-S/16
    patch_drop_rounding: str = "round"
    anchor_views: int = 1  # full-size masked anchors per image besides the target (the release's rand_views)
    label_smoothing: float = 0.0  # s: predictions (1 - s) p + s / K, on anchors and targets (released option)
    entropy_weight: float = 0.0  # weight of the anchors' mean prediction entropy, minimised (released ent_weight)
    # null: sharpen_temperature throughout. A value: linear from sharpen_temperature to it over sharpen_horizon x
    # the run (the release's start_sharpen -> final_sharpen, src/msn_train.py:257-259, horizon 1.25)
    final_sharpen_temperature: Optional[float] = None
    sharpen_horizon: float = 1.0  # the sharpening ramp's length in runs (the release: 1.25)
    # dinolite: the student's own init (student.weight_init) and PyTorch's for the head. released: every Linear
    # of backbone and head truncated normal std 0.02 with zero bias, LayerNorms 1 / 0, cls_token and pos_embed
    # truncated normal 0.02, the patch projection Kaiming normal (src/msn_train.py:504-511, src/deit.py:196-211)
    weight_init: str = "dinolite"


HEAD_BN_GROUPS = ("joint", "per_view_size")
WEIGHT_INITS = ("dinolite", "released")


def validate_msn(msn: MSNConfig, cfg: Config) -> None:
    check_choices(
        cfg,
        {
            "msn.head_bn_groups": HEAD_BN_GROUPS,
            "msn.head_bn": HEAD_BN,
            "msn.patch_drop_per": PATCH_DROP_PER,
            "msn.patch_drop_rounding": PATCH_DROP_ROUNDING,
            "msn.weight_init": WEIGHT_INITS,
        },
    )
    if msn.weight_init == "released" and cfg.student.pretrained_weights:
        raise ConfigError(
            f"msn.weight_init=released redraws the student's weights, so it cannot start from "
            f"student.pretrained_weights={cfg.student.pretrained_weights!r}; set msn.weight_init=dinolite"
        )
    check_ranges(
        cfg,
        (
            ("msn.mask_ratio", 0.0, 1.0, True, False),
            ("msn.num_prototypes", 1, math.inf, True, False),
            ("msn.hidden_dim", 1, math.inf, True, False),
            ("msn.output_dim", 1, math.inf, True, False),
            ("msn.temperature", 0.0, math.inf, False, False),
            ("msn.sharpen_temperature", 0.0, math.inf, False, False),
            ("msn.me_max_weight", 0.0, math.inf, True, False),
            ("msn.anchor_views", 1, math.inf, True, False),
            ("msn.label_smoothing", 0.0, 1.0, True, False),
            ("msn.entropy_weight", 0.0, math.inf, True, False),
            ("msn.sharpen_horizon", 0.0, math.inf, False, False),
        ),
    )
    if msn.final_sharpen_temperature is not None and not msn.final_sharpen_temperature > 0:
        raise ConfigError(
            f"invalid value for 'msn.final_sharpen_temperature': {msn.final_sharpen_temperature}; must be > 0 "
            "(or null: a constant msn.sharpen_temperature)"
        )


class MSNObjective(SSLObjective):
    """Student = ``{backbone, projector, prototypes}``; teacher = ``{backbone, projector}`` (EMA)."""

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        prototypes: Prototypes,
        loss: MSNLoss,
        momentum: Schedule,
        head_bn_groups: str = "joint",
        sharpen_temperature: Schedule | None = None,
    ) -> None:
        super().__init__()
        self.head_bn_groups = head_bn_groups  # msn.head_bn_groups
        self.sharpen_temperature = sharpen_temperature  # None: the loss's constant temperature
        self.student = nn.ModuleDict({"backbone": backbone, "projector": projector, "prototypes": prototypes})
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(projector)})
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.loss = loss
        self.momentum = momentum

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        target_views, anchor_views = batch["target_views"], batch["anchor_views"]
        focal_views = batch.get("focal_views")
        batch_size = target_views.shape[0]
        with torch.no_grad():
            target_cls = self.teacher["backbone"].forward_features(target_views)["x_norm_clstoken"]
            target = self.teacher["projector"](target_cls)
        images, keeps = [anchor_views], [batch["anchor_keep"]]
        if focal_views is not None and focal_views.numel():
            images.append(focal_views)
            keeps.append(batch["focal_keep"])
        outputs = self.student["backbone"].forward_features_list(images, None, keeps)
        per_size = [out["x_norm_clstoken"] for out in outputs]
        anchor_cls = torch.cat(per_size)
        anchor = project_anchors(self.student["projector"], per_size, self.head_bn_groups)
        prototypes = self.student["prototypes"]()
        sharpen = self.sharpen_temperature(iteration) if self.sharpen_temperature is not None else None
        out = self.loss(anchor, target, prototypes, sharpen)
        terms = {"msn_ce": out["cross_entropy"], "me_max": out["me_max"]}
        if self.loss.entropy_weight > 0:
            terms["entropy"] = out["entropy"]
        diagnostics = {
            "target_cls": target_cls.detach(),
            "anchor_cls": anchor_cls[:batch_size].detach(),
            "target_embedding": target.detach(),
            "teacher_head_probs": out["target_probs"],
            # cosine similarities to the prototypes: the monitor divides by msn.temperature (tau, MethodSpec.student_temp)
            "student_head_logits": self.loss.logits(anchor[:batch_size].detach(), prototypes.detach()),
        }
        return ObjectiveOutput(loss=out["loss"], terms=terms, diagnostics=diagnostics)

    def after_optimizer_step(self, iteration: int) -> None:
        ema_update(self.teacher, self.student, self.momentum(iteration))

    def schedule_values(self, iteration: int) -> dict[str, float]:
        values = {"momentum": self.momentum(iteration)}
        if self.sharpen_temperature is not None:
            values["sharpen_temperature"] = self.sharpen_temperature(iteration)
        return values


def project_anchors(projector: nn.Module, per_size: list[Tensor], head_bn_groups: str) -> Tensor:
    """The projector on the anchors' CLS features, one tensor per view size, rows concatenated in that order:
    one call on all of them (``joint``) or one call per view size (``per_view_size``: the head's BatchNorm sees
    one view size at a time, as the release's head inside each view size's forward). Under ``msn.head_bn=global``
    every rank makes the same calls, so each call's moments are all-reduced with the same call on the others."""
    if head_bn_groups == "per_view_size":
        return torch.cat([projector(cls) for cls in per_size])
    return projector(torch.cat(per_size))


def sharpen_schedule(cfg: Config) -> Schedule | None:
    """``msn.sharpen_temperature`` -> ``msn.final_sharpen_temperature``, linear over ``msn.sharpen_horizon`` x the
    run (the release's sharpening schedule); None when no final value is set (a constant temperature)."""
    c = cfg.msn
    if c.final_sharpen_temperature is None:
        return None
    run = cfg.optim.epochs * cfg.train.iterations_per_epoch
    return LinearSchedule(c.sharpen_temperature, c.final_sharpen_temperature, stretched_iters(run, c.sharpen_horizon))


@torch.no_grad()
def released_msn_init(backbone: nn.Module, projector: nn.Module) -> None:
    """MSN's released initialisation (``msn.weight_init=released``): every ``Linear`` of backbone and head
    truncated normal std 0.02 (cut at +-2, as the release's ``trunc_normal_``) with zero bias, every
    ``LayerNorm`` weight 1 / bias 0 (``src/msn_train.py:504-511``), ``cls_token`` and a learned ``pos_embed``
    truncated normal std 0.02 (``src/deit.py:196-197``), the patch projection Kaiming normal (fan-in, ReLU
    gain) with zero bias (``src/deit.py:208-211``). The head's BatchNorms keep PyTorch's 1 / 0, as released."""
    for module in (*backbone.modules(), *projector.modules()):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for name in ("cls_token", "pos_embed"):
        token = getattr(backbone, name, None)
        if isinstance(token, nn.Parameter) and token.requires_grad:  # a fixed sine-cosine table stays
            nn.init.trunc_normal_(token, std=0.02, a=-2.0, b=2.0)


def build_objective(cfg: Config) -> MSNObjective:
    c = cfg.msn
    backbone = build_student_backbone(cfg)
    projector = MSNProjectionHead(backbone.embed_dim, c.hidden_dim, c.output_dim, c.use_bn, c.head_bn)
    prototypes = Prototypes(c.num_prototypes, c.output_dim)
    if c.weight_init == "released":  # after the prototypes, which keep their (released) draw
        released_msn_init(backbone, projector)
    loss = checked(
        "msn",
        lambda: MSNLoss(
            c.temperature,
            c.sharpen_temperature,
            c.me_max_weight,
            sharpen=c.sharpen,
            me_max=c.me_max,
            use_sinkhorn=c.use_sinkhorn,
            label_smoothing=c.label_smoothing,
            entropy_weight=c.entropy_weight,
        ),
    )
    momentum = run_momentum_schedule(cfg)
    return MSNObjective(backbone, projector, prototypes, loss, momentum, c.head_bn_groups, sharpen_schedule(cfg))


def build_transform(cfg: Config) -> MultiViewAugmentation:
    """Target and the ``msn.anchor_views`` anchors: ``crops.global_crops_*``; focal anchors: ``crops.local_crops_*``; the colour,
    grayscale, blur and flip probabilities of the ``crops`` section on every view (MSN's views are
    alike), no solarisation."""
    c = cfg.crops

    def recipe(size: int, scale: list[float]) -> CropRecipe:
        return CropRecipe(
            size,
            tuple(scale),
            blur_p=c.blur_p_global1,
            solarize_p=0.0,
            horizontal_flip_p=c.horizontal_flip_p,
            color_jitter=tuple(c.color_jitter),
            color_jitter_p=c.color_jitter_p,
            grayscale_p=c.grayscale_p,
            blur_kernel_size=blur_kernel_for(size),
        )

    large = recipe(c.global_crops_size, c.global_crops_scale)
    focal = recipe(c.local_crops_size, c.local_crops_scale) if c.local_crops_number else None
    return MultiViewAugmentation([large] * (1 + cfg.msn.anchor_views), focal, c.local_crops_number, c.mean, c.std)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    return functools.partial(
        collate_msn,
        patch_size=cfg.student.patch_size,
        mask_ratio=cfg.msn.mask_ratio,
        focal_patch_drop=cfg.msn.focal_patch_drop,
        patch_drop_per=cfg.msn.patch_drop_per,
        patch_drop_rounding=cfg.msn.patch_drop_rounding,
    )


def training_flops(cfg: Config) -> dict[str, Any]:
    """Student: the anchors + focal anchors on their kept patches (+ projector), forward + backward; target:
    the full target view (+ projector), forward. Projector and prototype products counted per view."""
    c, crops = cfg.msn, cfg.crops
    keep = 1.0 - c.mask_ratio
    n_large = (crops.global_crops_size // cfg.student.patch_size) ** 2
    n_focal = (crops.local_crops_size // cfg.student.patch_size) ** 2
    embed = embed_dim(cfg)
    head = embed * c.hidden_dim + c.hidden_dim * c.hidden_dim + c.hidden_dim * c.output_dim
    head += c.output_dim * c.num_prototypes
    focal_keep = keep if c.focal_patch_drop else 1.0
    student = c.anchor_views * (vit_macs(cfg, crops.global_crops_size, keep * n_large) + head)
    student += crops.local_crops_number * (vit_macs(cfg, crops.local_crops_size, focal_keep * n_focal) + head)
    teacher = vit_macs(cfg, crops.global_crops_size) + head
    return flops_record(student, teacher, cfg, anchor_views=c.anchor_views + crops.local_crops_number)


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("projector", "prototypes")


# The two collapses of the paper's ablation, seen on the target assignments p+ (teacher_head_probs).
# Sinkhorn-balanced targets (the demo preset) raise a healthy run's per-sample entropy towards, but not
# to, the unsharpened runs' ~ln K, so the uniform rule's max sits between the two (below the default);
# a healthy run's batch-mean entropy stays at ~ln K, so one prototype is flagged from a few prototypes
# on (above the default). Measured: docs/monitor.md#collapse-rules.
WATCHDOG_THRESHOLDS = (
    # without ME-MAX (and Sinkhorn): the batch concentrates on a few prototypes
    one_prototype(min=0.25, after_iteration=60, patience=2),
    # without sharpening: every target is ~uniform over the prototypes (entropy / ln K -> 1)
    uniform_output(max=0.9, after_iteration=30, patience=2),
)

METHOD = register_method(
    MethodSpec(
        name="msn",
        paper="Assran et al. 2022, MSN (masked anchor vs unmasked target prototype assignments, ME-MAX)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="teacher",
        head_names=head_names,
        demo_preset="demo_msn",
        monitor_embeddings={"target_cls": "backbone", "anchor_cls": "student_backbone", "target_embedding": "head"},
        watchdog_thresholds=WATCHDOG_THRESHOLDS,
        config_sections=(ConfigSection("msn", MSNConfig, validate_msn),),
        student_temp=lambda cfg: cfg.msn.temperature,
    )
)
