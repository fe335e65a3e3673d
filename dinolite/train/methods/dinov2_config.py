"""DINOv2's config sections: ``dino``, ``ibot`` and ``teacher``, with the rules only DINOv2 needs.

Key names and defaults are DINOv2's ``ssl_default_config.yaml`` (the ViT-L/16 short recipe), so that DINOv2
users keep their overrides. The teacher's EMA momentum is the shared ``ema`` section (DINOv2's
``teacher.momentum_teacher`` / ``final_momentum_teacher`` load there), and ``train.centering`` stays in
``train`` where DINOv2 has it; both are read and checked here. These rules run only when
``train.method`` is ``dinov2`` (:mod:`dinolite.config.sections`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from dinolite.config import (
    Config,
    ConfigError,
    ConfigSection,
    check_choices,
    check_fraction_pairs,
    check_positive,
    check_ranges,
)
from dinolite.train.methods.dinov2_objective import CENTERING_CHOICES


@dataclass
class DinoConfig:
    """The DINO loss on the CLS token and its head (Caron et al. 2021), KoLeo (Sablayrolles et al. 2019)."""

    loss_weight: float = 1.0  # weight of the DINO (CLS-token) loss
    head_n_prototypes: int = 65536  # K, the prototypes of the DINO head
    head_bottleneck_dim: int = 256  # the head's L2-normalised bottleneck before the prototypes
    head_nlayers: int = 3  # MLP layers before the bottleneck
    head_hidden_dim: int = 2048  # width of those layers
    koleo_loss_weight: float = 0.1  # KoLeo regulariser on the student CLS tokens (0: off)


@dataclass
class IbotConfig:
    """iBOT's masked patch-token loss (Zhou et al. 2022) and its head."""

    loss_weight: float = 1.0  # weight of the iBOT (masked patch) loss
    mask_sample_probability: float = 0.5  # fraction of the global crops that get a block mask
    # [min, max] fraction of the patches one masked crop hides (DINOv2 spreads the ratios over the batch)
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5])
    separate_head: bool = False  # false: iBOT uses the DINO head (then the head_* keys below must match dino's)
    head_n_prototypes: int = 65536  # prototypes of a separate iBOT head
    head_bottleneck_dim: int = 256  # bottleneck of a separate iBOT head
    head_nlayers: int = 3  # MLP layers of a separate iBOT head
    head_hidden_dim: int = 2048  # width of a separate iBOT head


@dataclass
class TeacherConfig:
    """The teacher's softmax temperatures and centring (DINOv2's ``teacher`` section without the EMA
    momentum, which is the shared ``ema`` section)."""

    warmup_teacher_temp: float = 0.04  # teacher temperature at iteration 0, linear to teacher_temp
    teacher_temp: float = 0.07  # teacher temperature after warmup_teacher_temp_epochs
    warmup_teacher_temp_epochs: int = 30  # epochs of the teacher temperature warm-up
    student_temp: float = 0.1  # student softmax temperature (the collapse monitor's cross-entropy uses it too)
    center_momentum: float = 0.9  # EMA momentum of the centre (train.centering=centering)
    sinkhorn_iterations: int = 3  # Sinkhorn-Knopp iterations (train.centering=sinkhorn_knopp)


# iBOT's block masks: at least this many patches per block, at most half the patches (DINOv2's collate).
MIN_MASK_PATCHES = 4
# With ibot.separate_head=false these ibot.* keys are the DINO head's: a layer must not set them apart.
SHARED_HEAD_KEYS = ("head_n_prototypes", "head_bottleneck_dim", "head_nlayers", "head_hidden_dim")

HEAD_RANGES = tuple(
    (f"{section}.{key}", 1, math.inf, True, False)
    for section in ("dino", "ibot")
    for key in ("head_bottleneck_dim", "head_nlayers", "head_hidden_dim")
)


def validate_dino(dino: DinoConfig, cfg: Config) -> None:
    check_positive(cfg, ("dino.head_n_prototypes",))
    check_ranges(
        cfg,
        (
            ("dino.loss_weight", 0.0, math.inf, True, False),
            ("dino.koleo_loss_weight", 0.0, math.inf, True, False),
            *HEAD_RANGES[:3],
        ),
    )
    if cfg.optim.freeze_last_layer_epochs and cfg.optim.freeze_last_layer_epochs >= cfg.optim.epochs:
        raise ConfigError(
            f"invalid value for 'optim.freeze_last_layer_epochs': {cfg.optim.freeze_last_layer_epochs}; must be < "
            f"optim.epochs={cfg.optim.epochs} (the prototypes would stay frozen for the whole run)"
        )


def validate_ibot(ibot: IbotConfig, cfg: Config) -> None:
    check_positive(cfg, ("ibot.head_n_prototypes",))
    check_fraction_pairs(cfg, ("ibot.mask_ratio_min_max",))
    check_ranges(
        cfg,
        (
            ("ibot.mask_sample_probability", 0.0, 1.0, True, True),
            ("ibot.loss_weight", 0.0, math.inf, True, False),
            *HEAD_RANGES[3:],
        ),
    )
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    if int(0.5 * grid * grid) < MIN_MASK_PATCHES:
        raise ConfigError(
            f"invalid value for 'crops.global_crops_size': {cfg.crops.global_crops_size} with student.patch_size="
            f"{cfg.student.patch_size} gives {grid}x{grid} patches; iBOT's block masking needs at least "
            f"{2 * MIN_MASK_PATCHES} patches per global crop (crops.global_crops_size >= "
            f"{math.ceil(math.sqrt(2 * MIN_MASK_PATCHES)) * cfg.student.patch_size})"
        )


def check_shared_head(ibot: Mapping[str, Any], merged: Any, source: str) -> None:
    """With ``ibot.separate_head=false`` iBOT uses the DINO head: an ``ibot.head_*`` that a user file or the
    overrides set to another value than ``dino.head_*`` would be silently ignored."""
    if merged.ibot.separate_head:
        return
    for key in SHARED_HEAD_KEYS:
        if key in ibot and merged.ibot[key] != merged.dino[key]:
            raise ConfigError(
                f"{source}: invalid value for 'ibot.{key}': {merged.ibot[key]}; with ibot.separate_head=false iBOT "
                f"uses the DINO head (dino.{key}={merged.dino[key]}): set ibot.separate_head=true or drop the key"
            )


def validate_teacher(teacher: TeacherConfig, cfg: Config) -> None:
    check_choices(cfg, {"train.centering": CENTERING_CHOICES})
    check_ranges(
        cfg,
        (
            ("teacher.center_momentum", 0.0, 1.0, True, True),
            ("teacher.warmup_teacher_temp", 0.0, math.inf, False, False),
            ("teacher.teacher_temp", 0.0, math.inf, False, False),
            ("teacher.student_temp", 0.0, math.inf, False, False),
            ("teacher.warmup_teacher_temp_epochs", 0, math.inf, True, False),
            ("teacher.sinkhorn_iterations", 1, math.inf, True, False),
        ),
    )


SECTIONS = (
    ConfigSection("dino", DinoConfig, validate_dino),
    ConfigSection("ibot", IbotConfig, validate_ibot, check_layer=check_shared_head),
    ConfigSection("teacher", TeacherConfig, validate_teacher),
)
