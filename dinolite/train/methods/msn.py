"""MSN: match the prototype assignment of a masked anchor view to that of the unmasked target view.

Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning" (Sec. 3). Per image: a
target view, an anchor view of the same size and ``crops.local_crops_number`` small focal anchor views
(:class:`dinolite.data.views.MultiViewAugmentation`); every anchor drops ``msn.mask_ratio`` of its
patches, which the student ViT never encodes (``keep_indices``). Student = backbone + projection head
+ learnable prototypes; the target network is an EMA of backbone + projection head (the prototypes are
shared, used without gradient on the target side; its momentum is the shared ``ema`` section). The loss (:class:`dinolite.losses.MSNLoss`) is the
cross-entropy between the sharpened target assignment and each anchor's assignment, plus ME-MAX over
the global batch. Switches ``msn.sharpen`` / ``msn.me_max`` turn off each collapse-preventing part; the
watchdog's defaults below flag the collapse each one then produces. The target encoder is evaluated.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigSection, check_choices, check_ranges
from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import collate_msn
from dinolite.data.views import MultiViewAugmentation, blur_kernel_for
from dinolite.losses import MSNLoss
from dinolite.models.masked_heads import MSNProjectionHead, Prototypes
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
from dinolite.train.schedules import Schedule


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
    use_sinkhorn: bool = False  # Sinkhorn-balanced targets
    # Released behaviour, one switch each (docs/faithfulness.md, MSN; facebookresearch/msn 4388dc1):
    # true: the focal views drop msn.mask_ratio of their patches too. false: they keep every patch, as the
    # release does (src/deit.py:221-229 drops patches for the first view size only, resetting patch_drop at 228)
    focal_patch_drop: bool = True
    # joint: one projection-head call on anchors and focal views together (one set of BatchNorm statistics).
    # per_view_size: one call per view size, each with its own batch statistics, as the release runs the head
    # inside each view size's forward (src/deit.py:221-229, the head at 263)
    head_bn_groups: str = "joint"


HEAD_BN_GROUPS = ("joint", "per_view_size")


def validate_msn(msn: MSNConfig, cfg: Config) -> None:
    check_choices(cfg, {"msn.head_bn_groups": HEAD_BN_GROUPS})
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
        ),
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
    ) -> None:
        super().__init__()
        self.head_bn_groups = head_bn_groups  # msn.head_bn_groups
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
        if self.head_bn_groups == "per_view_size":  # the head's BatchNorm sees one view size at a time
            anchor = torch.cat([self.student["projector"](cls) for cls in per_size])
        else:
            anchor = self.student["projector"](anchor_cls)
        prototypes = self.student["prototypes"]()
        out = self.loss(anchor, target, prototypes)
        terms = {"msn_ce": out["cross_entropy"], "me_max": out["me_max"]}
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
        return {"momentum": self.momentum(iteration)}


def build_objective(cfg: Config) -> MSNObjective:
    c = cfg.msn
    backbone = build_student_backbone(cfg)
    projector = MSNProjectionHead(backbone.embed_dim, c.hidden_dim, c.output_dim, c.use_bn)
    prototypes = Prototypes(c.num_prototypes, c.output_dim)
    loss = checked(
        "msn",
        lambda: MSNLoss(
            c.temperature,
            c.sharpen_temperature,
            c.me_max_weight,
            sharpen=c.sharpen,
            me_max=c.me_max,
            use_sinkhorn=c.use_sinkhorn,
        ),
    )
    return MSNObjective(backbone, projector, prototypes, loss, run_momentum_schedule(cfg), c.head_bn_groups)


def build_transform(cfg: Config) -> MultiViewAugmentation:
    """Target and anchor: ``crops.global_crops_*``; focal anchors: ``crops.local_crops_*``; the colour,
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
    return MultiViewAugmentation([large, large], focal, c.local_crops_number, c.mean, c.std)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    return functools.partial(
        collate_msn,
        patch_size=cfg.student.patch_size,
        mask_ratio=cfg.msn.mask_ratio,
        focal_patch_drop=cfg.msn.focal_patch_drop,
    )


def training_flops(cfg: Config) -> dict[str, Any]:
    """Student: anchor + focal anchors on their kept patches (+ projector), forward + backward; target:
    the full target view (+ projector), forward. Projector and prototype products counted per view."""
    c, crops = cfg.msn, cfg.crops
    keep = 1.0 - c.mask_ratio
    n_large = (crops.global_crops_size // cfg.student.patch_size) ** 2
    n_focal = (crops.local_crops_size // cfg.student.patch_size) ** 2
    embed = embed_dim(cfg)
    head = embed * c.hidden_dim + c.hidden_dim * c.hidden_dim + c.hidden_dim * c.output_dim
    head += c.output_dim * c.num_prototypes
    student = vit_macs(cfg, crops.global_crops_size, keep * n_large) + head
    student += crops.local_crops_number * (vit_macs(cfg, crops.local_crops_size, keep * n_focal) + head)
    teacher = vit_macs(cfg, crops.global_crops_size) + head
    return flops_record(student, teacher, cfg, anchor_views=1 + crops.local_crops_number)


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
