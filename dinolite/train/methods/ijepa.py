"""I-JEPA: predict, in representation space, the target encoder's view of image blocks from a context.

Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture" (Sec. 3). Per image: one crop (no other augmentation), multi-block masks
(:class:`dinolite.data.masked_views.MultiBlockMaskGenerator`: 4 target blocks, one context block minus
the targets). The context encoder (the student ViT) encodes ONLY the visible context patches
(``keep_indices``: the dropped patches never enter a block, which is where the method saves compute);
the narrow predictor (:class:`dinolite.models.predictor.IJEPAPredictor`) predicts every target block
from the context tokens plus mask tokens at the targets' positions; the target encoder (an EMA of the
context encoder, no gradient) encodes the full image, and the loss
(:class:`dinolite.losses.IJEPALoss`) regresses the predictions onto its layer-normalised outputs at
the target positions. Collapse is avoided by the EMA target and the narrow predictor (no negatives, no
prototypes). The target encoder is the network evaluated and exported.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigSection, check_choices, check_ranges
from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import SingleViewAugmentation, collate_ijepa
from dinolite.data.masked_views import MASK_SAMPLERS, MultiBlockMaskGenerator
from dinolite.losses import IJEPALoss
from dinolite.models.backbone_factory import backbone_kwargs
from dinolite.models.predictor import IJEPAPredictor
from dinolite.monitor.collapse_rules import predictable_target
from dinolite.train.ema import ema_update, run_momentum_schedule
from dinolite.train.methods.masked_common import (
    checked,
    flops_record,
    transformer_macs,
    vit_macs,
)
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone
from dinolite.train.schedules import Schedule


@dataclass
class IJEPAConfig:
    """I-JEPA's section (``train.method: ijepa``). Defaults: the paper's masks, the released ViT-H predictor
    (depth 12, width 384). The EMA target follows the shared ``ema`` section; the view is one crop of
    ``crops.global_crops_size`` / ``global_crops_scale``."""

    num_targets: int = 4  # target blocks per image
    target_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])  # fraction of the patch grid per target
    target_aspect: list[float] = field(default_factory=lambda: [0.75, 1.5])  # height / width of a target block
    # the context block, before the target patches are removed from it
    context_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    min_keep: int = 10  # fewest context patches an image may keep
    # paper: the paper's blocks (dinolite.data.masked_views); released: the released collator's (ijepa 52c1ae9
    # src/masks/multiblock.py: no block on the last row/column, the context the top-left (H-1)x(W-1) square, one
    # random number for a target's scale and aspect ratio, the first min_keep raster indices kept)
    mask_sampler: str = "paper"
    predictor_depth: int = 12  # transformer blocks of the predictor
    predictor_embed_dim: int = 384  # predictor width
    predictor_num_heads: int = 12  # predictor attention heads
    loss: str = "smooth_l1"  # smooth_l1 (released code) | mse (the paper's squared L2) | l1
    # the predictor's residual output projections start divided by sqrt(2 * layer); false: they start at std
    # 0.02, as in released training, whose init_model redraws every Linear after the constructor's rescaling
    # (facebookresearch/ijepa 52c1ae9 src/helper.py:86-99; the encoder's counterpart: student.weight_init)
    predictor_residual_rescale: bool = True


LOSSES = ("smooth_l1", "mse", "l1")


def validate_ijepa(ijepa: IJEPAConfig, cfg: Config) -> None:
    check_choices(cfg, {"ijepa.loss": LOSSES, "ijepa.mask_sampler": MASK_SAMPLERS})
    check_ranges(
        cfg,
        tuple(
            (f"ijepa.{key}", 1, math.inf, True, False)
            for key in ("num_targets", "predictor_depth", "predictor_embed_dim", "predictor_num_heads")
        ),
    )


class IJEPAObjective(SSLObjective):
    """Student = ``{backbone (context encoder), predictor}``; teacher = ``{backbone}`` (EMA target)."""

    def __init__(self, backbone: nn.Module, predictor: nn.Module, loss: IJEPALoss, momentum: Schedule) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "predictor": predictor})
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone)})
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.teacher.eval()
        self.loss = loss
        self.momentum = momentum

    def train(self, mode: bool = True) -> IJEPAObjective:
        super().train(mode)
        self.teacher.eval()  # the target encoder runs without stochastic depth
        return self

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        images, context_idx, target_idx = batch["images"], batch["context_idx"], batch["target_idx"]
        with torch.no_grad():
            target_tokens = self.teacher["backbone"].forward_features(images)["x_norm_patchtokens"]
        context = self.student["backbone"].forward_features(images, keep_indices=context_idx)["x_norm_patchtokens"]
        predictions = self.student["predictor"](context, context_idx, target_idx)
        errors = self.loss.errors(predictions, target_tokens, target_idx)
        loss = errors.mean()
        diagnostics = {
            "target_features": target_tokens.mean(dim=1).detach(),
            "context_features": context.mean(dim=1).detach(),
            # One predicted patch per image (the first target block's first patch; its position differs
            # between images): the output the loss acts on, where a constant prediction would show.
            "predictions": predictions[:, 0, 0].detach(),
            "target_prediction_error": self.loss.per_image(errors),
        }
        return ObjectiveOutput(loss=loss, terms={"ijepa_loss": loss}, diagnostics=diagnostics)

    def after_optimizer_step(self, iteration: int) -> None:
        ema_update(self.teacher, self.student, self.momentum(iteration))

    def schedule_values(self, iteration: int) -> dict[str, float]:
        return {"momentum": self.momentum(iteration)}


def patch_grid(cfg: Config) -> int:
    return cfg.crops.global_crops_size // cfg.student.patch_size


def mask_generator(cfg: Config) -> MultiBlockMaskGenerator:
    c = cfg.ijepa
    return checked(
        "ijepa",
        lambda: MultiBlockMaskGenerator(
            patch_grid(cfg),
            c.num_targets,
            c.target_scale,
            c.target_aspect,
            c.context_scale,
            min_keep=c.min_keep,
            sampler=c.mask_sampler,
        ),
    )


def build_objective(cfg: Config) -> IJEPAObjective:
    c = cfg.ijepa
    backbone = build_student_backbone(cfg)
    predictor = checked(
        "ijepa",
        lambda: IJEPAPredictor(
            patch_grid(cfg),
            backbone.embed_dim,
            c.predictor_embed_dim,
            c.predictor_depth,
            c.predictor_num_heads,
            sincos_order=cfg.student.sincos_order,  # the predictor's table follows the encoder's
            residual_rescale=c.predictor_residual_rescale,
        ),
    )
    return IJEPAObjective(backbone, predictor, IJEPALoss(c.loss), run_momentum_schedule(cfg))


def build_transform(cfg: Config) -> SingleViewAugmentation:
    """One random-resized crop; no flip, no colour or blur (I-JEPA's "no hand-crafted augmentations")."""
    recipe = CropRecipe(
        cfg.crops.global_crops_size,
        tuple(cfg.crops.global_crops_scale),
        blur_p=0.0,
        solarize_p=0.0,
        horizontal_flip_p=0.0,
        color_jitter_p=0.0,
        grayscale_p=0.0,
    )
    return SingleViewAugmentation(recipe, cfg.crops.mean, cfg.crops.std)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    return functools.partial(collate_ijepa, mask_generator=mask_generator(cfg))


def expected_mask_sizes(cfg: Config, draws: int = 16) -> tuple[float, int, int]:
    """Mean context patches, targets per image, patches per target (masks of a fixed seed, for FLOPs)."""
    generator = torch.Generator().manual_seed(0)
    gen = mask_generator(cfg)
    sizes = [gen(8, generator) for _ in range(draws)]
    context = sum(c.shape[1] for c, _ in sizes) / draws
    targets = sum(t.shape[2] for _, t in sizes) / draws
    return context, cfg.ijepa.num_targets, targets


def training_flops(cfg: Config) -> dict[str, Any]:
    """Context encoder on the visible patches + predictor (forward + backward), target encoder on the
    full image (forward); see :mod:`masked_common` for the counting rule. The predictor embeds the
    context once (``Nc D Dp``), runs its blocks on ``M`` sequences of ``Nc + Nt`` tokens and projects the
    ``M Nt`` outputs back (``M Nt Dp D``)."""
    size = cfg.crops.global_crops_size
    context, m, n_target = expected_mask_sizes(cfg)
    embed = backbone_kwargs(cfg.student, size)["embed_dim"]
    width = cfg.ijepa.predictor_embed_dim
    predictor = (
        context * embed * width
        + m * transformer_macs(context + n_target, width, cfg.ijepa.predictor_depth)
        + m * n_target * width * embed
    )
    context_encoder = vit_macs(cfg, size, visible_patches=context)
    full_encoder = vit_macs(cfg, size)
    return flops_record(
        context_encoder + predictor,
        full_encoder,
        cfg,
        context_patches=context,
        target_patches=m * n_target,
        flops_context_encoder=round(2 * context_encoder),
        flops_full_encoder=round(2 * full_encoder),
        flops_predictor=round(2 * predictor),
    )


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("predictor",)


# I-JEPA's collapse is a target that the predictor can match from the target positions alone: the loss
# per image falls towards 0, an order of magnitude below a healthy run's. The std / RankMe of the mean
# patch feature do not separate the two on digits: 8x8 digits are mostly blank patches, identical in
# every image, so every image's mean patch feature is nearly the same. Measured:
# docs/monitor.md#collapse-rules.
WATCHDOG_THRESHOLDS = (predictable_target("target_prediction_error", min=0.02, after_iteration=60, patience=3),)

METHOD = register_method(
    MethodSpec(
        name="ijepa",
        paper="Assran et al. 2023, I-JEPA (latent prediction of target blocks from a context block)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="teacher",
        head_names=head_names,
        demo_preset="demo_ijepa",
        monitor_embeddings={
            "target_features": "backbone",
            "context_features": "student_backbone",
            "predictions": "predictor",
        },
        watchdog_thresholds=WATCHDOG_THRESHOLDS,
        eval_features="avgpool",
        config_sections=(ConfigSection("ijepa", IJEPAConfig, validate_ijepa),),
        monitor_means={"target_prediction_error": "target_prediction_error"},
        reads_cls_token=False,  # no loss term reads it; the released encoder has none (student.cls_token)
    )
)
