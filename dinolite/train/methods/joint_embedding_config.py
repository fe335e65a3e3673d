"""The ``joint_embedding`` config section, which the joint-embedding family shares (views, projector,
predictor), and the rules of each member's own knobs.

Every family member registers this section with the family's rules plus its own (:func:`family_section`),
so a knob only one method reads is checked only when ``train.method`` is that method: SimCLR's and
DirectCLR's ``temperature``, DirectCLR's ``directclr_d0``, Barlow Twins' ``lambda_offdiag``, SimSiam's and
BYOL's ``target``. A method added to the family puts its own knobs in a section of its own (VICReg:
``vicreg``); these keys stay here because saved runs and lab matrices name them. The EMA target's momentum
(BYOL) is the shared ``ema`` section; the former ``joint_embedding.target_momentum`` /
``final_target_momentum`` load there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dinolite.config import Config, ConfigSection, check_choices, check_ranges
from dinolite.config.sections import SectionRule


@dataclass
class ViewConfig:
    """Photometric recipe of one view (dinolite/data/views.py); sizes, scales and the number of small
    views come from ``crops``."""

    horizontal_flip_p: float = 0.5  # probability of a horizontal flip
    # brightness, contrast, saturation, hue
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])
    color_jitter_p: float = 0.8  # probability of the colour jitter
    grayscale_p: float = 0.2  # probability of a grayscale conversion
    blur_p: float = 1.0  # probability of a Gaussian blur
    blur_kernel_size: int = 0  # odd; 0 = 10% of the crop side (SimCLR's rule)
    solarize_p: float = 0.0  # probability of solarisation


@dataclass
class JointEmbeddingConfig:
    """SimCLR, Barlow Twins, SimSiam / BYOL, DirectCLR and VICReg (docs/methods_joint_embedding.md). Defaults:
    BYOL's (Grill et al. 2020); the presets demo_<method> / vitb16_<method> set the rest."""

    view1: ViewConfig = field(default_factory=ViewConfig)  # the first view's photometric recipe
    view2: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.1, solarize_p=0.2))  # the second view's
    # the crops.local_crops_number small views of crops.local_crops_size (multi-crop; 0 = none)
    local_view: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.5))
    projector_layers: int = 2  # Linear-BN-ReLU blocks then a Linear; 0 = no projector
    projector_hidden_dim: int = 4096  # width of the projector's hidden layers
    projector_out_dim: int = 256  # the embedding the loss sees
    projector_last_bn: bool = False  # BatchNorm (no affine) on the projector output (SimSiam, MoCo v3)
    predictor_layers: int = 0  # SimSiam / BYOL: 2; 0 = no predictor
    predictor_hidden_dim: int = 4096  # width of the predictor's hidden layer
    predictor_last_bn: bool = False  # BatchNorm (no affine) on the predictor output
    temperature: float = 0.1  # InfoNCE temperature (SimCLR, DirectCLR)
    directclr_d0: int = 360  # DirectCLR: the contrastive loss sees the first d0 dims of the CLS feature
    lambda_offdiag: float = 0.005  # Barlow Twins' weight of the off-diagonal (redundancy) term
    stop_gradient: bool = True  # SimSiam / BYOL: no gradient through the target branch
    # SimSiam / BYOL: false = the asymmetric loss of Wang et al. 2022: view 0 (view1) is the source, view 1
    # (view2) the target, local crops are sources only (docs/methods_joint_embedding.md)
    symmetric_loss: bool = True
    target: str = "stopgrad"  # stopgrad (SimSiam: the target is the online network) | ema (BYOL: ema section)


TARGETS = ("stopgrad", "ema")


def validate_family(section: JointEmbeddingConfig, cfg: Config) -> None:
    """What every member reads: the projector's and the predictor's shapes."""
    check_ranges(
        cfg,
        (
            ("joint_embedding.projector_layers", 0, math.inf, True, False),
            ("joint_embedding.projector_hidden_dim", 1, math.inf, True, False),
            ("joint_embedding.projector_out_dim", 1, math.inf, True, False),
            ("joint_embedding.predictor_layers", 0, math.inf, True, False),
            ("joint_embedding.predictor_hidden_dim", 1, math.inf, True, False),
        ),
    )


def validate_temperature(section: JointEmbeddingConfig, cfg: Config) -> None:
    """SimCLR, DirectCLR: the InfoNCE temperature."""
    check_ranges(cfg, (("joint_embedding.temperature", 0.0, math.inf, False, False),))


def validate_directclr(section: JointEmbeddingConfig, cfg: Config) -> None:
    """DirectCLR: d0 >= 1 (its upper bound, the backbone's width, is checked when the objective is built)."""
    check_ranges(cfg, (("joint_embedding.directclr_d0", 1, math.inf, True, False),))


def validate_barlow_twins(section: JointEmbeddingConfig, cfg: Config) -> None:
    check_ranges(cfg, (("joint_embedding.lambda_offdiag", 0.0, math.inf, True, False),))


def validate_siamese(section: JointEmbeddingConfig, cfg: Config) -> None:
    """SimSiam, BYOL: the target branch."""
    check_choices(cfg, {"joint_embedding.target": TARGETS})


def family_section(*rules: SectionRule) -> ConfigSection:
    """The ``joint_embedding`` section with the family's rules and a member's own ``rules``."""

    def validate(section: Any, cfg: Config) -> None:
        validate_family(section, cfg)
        for rule in rules:
            rule(section, cfg)

    return ConfigSection("joint_embedding", JointEmbeddingConfig, validate)
