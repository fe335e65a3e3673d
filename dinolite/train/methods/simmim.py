"""SimMIM: regress the raw pixels of randomly masked patches with a one-layer head.

Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling" (Sec. 3). Per image: one crop
(RandomResizedCrop, flip), random masks of ``simmim.mask_ratio`` of the ``simmim.mask_patch_size``
pixel units (:class:`dinolite.data.masked_views.SimMIMMaskGenerator`); masked patches enter the ViT as
the learnable ``mask_token`` (the encoder sees every position, unlike I-JEPA/MSN); a linear layer +
pixel shuffle (:class:`dinolite.models.masked_heads.SimMIMHead`) predicts the pixels and the loss
(:class:`dinolite.losses.SimMIMLoss`) is L1 on the masked pixels only. Pixel targets cannot collapse,
so there is no teacher; the student backbone is evaluated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from dinolite.config import Config, ConfigSection, check_ranges
from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import SingleViewAugmentation, collate_simmim
from dinolite.data.masked_views import SimMIMMaskGenerator
from dinolite.losses import SimMIMLoss
from dinolite.models.masked_heads import SimMIMHead
from dinolite.monitor.collapse_rules import one_direction
from dinolite.train.methods.masked_common import (
    checked,
    embed_dim,
    flops_record,
    vit_macs,
)
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone


@dataclass
class SimMIMConfig:
    """SimMIM's section (``train.method: simmim``). Defaults: the paper's ViT-B recipe. The view is one crop
    of ``crops.global_crops_size``."""

    mask_patch_size: int = 32  # pixels per mask unit, a multiple of student.patch_size
    mask_ratio: float = 0.6  # fraction of the mask units masked
    norm_target: bool = False  # per-patch normalised pixel targets


def validate_simmim(simmim: SimMIMConfig, cfg: Config) -> None:
    check_ranges(
        cfg, (("simmim.mask_patch_size", 1, math.inf, True, False), ("simmim.mask_ratio", 0.0, 1.0, True, False))
    )


class SimMIMObjective(SSLObjective):
    """Student = ``{backbone, decoder}``; no teacher."""

    def __init__(self, backbone: nn.Module, decoder: SimMIMHead, loss: SimMIMLoss) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "decoder": decoder})
        self.teacher = nn.ModuleDict()
        self.loss = loss

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        images, masks = batch["images"], batch["masks"]
        out = self.student["backbone"].forward_features(images, masks=masks)
        patch = self.loss.patch_size
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        reconstruction = self.student["decoder"](out["x_norm_patchtokens"], grid)
        loss = self.loss(reconstruction, images, masks)
        diagnostics = {
            "patch_features": out["x_norm_patchtokens"].mean(dim=1).detach(),
            "cls": out["x_norm_clstoken"].detach(),
        }
        return ObjectiveOutput(loss=loss, terms={"simmim_l1": loss}, diagnostics=diagnostics)


def build_objective(cfg: Config) -> SimMIMObjective:
    backbone = build_student_backbone(cfg)
    decoder = SimMIMHead(backbone.embed_dim, cfg.student.patch_size)
    return SimMIMObjective(backbone, decoder, SimMIMLoss(cfg.student.patch_size, cfg.simmim.norm_target))


def build_transform(cfg: Config) -> SingleViewAugmentation:
    """RandomResizedCrop (``crops.global_crops_*``) + flip (``crops.horizontal_flip_p``); no colour ops."""
    recipe = CropRecipe(
        cfg.crops.global_crops_size,
        tuple(cfg.crops.global_crops_scale),
        blur_p=0.0,
        solarize_p=0.0,
        horizontal_flip_p=cfg.crops.horizontal_flip_p,
        color_jitter_p=0.0,
        grayscale_p=0.0,
    )
    return SingleViewAugmentation(recipe, cfg.crops.mean, cfg.crops.std)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    generator = checked(
        "simmim",
        lambda: SimMIMMaskGenerator(
            cfg.crops.global_crops_size, cfg.simmim.mask_patch_size, cfg.student.patch_size, cfg.simmim.mask_ratio
        ),
    )
    return functools.partial(collate_simmim, mask_generator=generator)


def training_flops(cfg: Config) -> dict[str, Any]:
    """Encoder on every patch (masked ones as mask tokens) + the linear decoder, forward + backward."""
    n_patches = (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    decoder = n_patches * embed_dim(cfg) * 3 * cfg.student.patch_size**2
    return flops_record(vit_macs(cfg, cfg.crops.global_crops_size) + decoder, 0.0, cfg)


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("decoder",)


METHOD = register_method(
    MethodSpec(
        name="simmim",
        paper="Xie et al. 2022, SimMIM (L1 regression of masked pixels with a linear head)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        head_names=head_names,
        demo_preset="demo_simmim",
        monitor_embeddings={"patch_features": "backbone", "cls": "student_backbone"},
        # pixel targets cannot collapse; a dead backbone (constant features) is still worth flagging
        watchdog_thresholds=(one_direction("backbone", after_iteration=60, patience=3),),
        config_sections=(ConfigSection("simmim", SimMIMConfig, validate_simmim),),
        reads_cls_token=False,  # the loss reads the masked patches; the CLS feature is only monitored
    )
)
