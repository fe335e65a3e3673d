"""DirectCLR (Jing et al. 2022, "Understanding Dimensional Collapse in Contrastive Self-supervised Learning").

Two views per image -> backbone CLS -> InfoNCE on its first ``joint_embedding.directclr_d0`` dimensions
(:class:`dinolite.losses.DirectCLRLoss`), negatives from the global batch, **no projector** (the paper's
point: the projector's job is done by a fixed sub-vector). The evaluated network is the student.

The ``directclr`` section holds DirectCLR's faithfulness options (docs/faithfulness.md, DirectCLR); its
``d0`` and temperature stay ``joint_embedding.directclr_d0`` / ``temperature`` (saved runs name them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinolite.config import Config, ConfigError, ConfigSection, check_choices
from dinolite.losses import DirectCLRLoss
from dinolite.losses.info_nce_loss import NEGATIVES
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    method_spec,
    require_symmetric_loss,
)
from dinolite.train.methods.joint_embedding_config import validate_directclr, validate_temperature
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone


@dataclass
class DirectCLRConfig:
    """DirectCLR's section (``train.method: directclr``); views are the ``joint_embedding`` keys."""

    # both_views: NT-Xent, both views of every other image are negatives (2N - 2), the SimCLR loss the paper
    # names. cross_view: the release's, facebookresearch/directclr a86f64c directclr/main.py:178-181 and
    # 206-216: the other view of every other image (N - 1), both directions averaged.
    negatives: str = "both_views"


def validate_directclr_section(section: DirectCLRConfig, cfg: Config) -> None:
    check_choices(cfg, {"directclr.negatives": NEGATIVES})


class DirectCLRObjective(JointEmbeddingObjective):
    """InfoNCE on ``cls[:, :d0]`` of two views (see the module docstring)."""

    loss_name = "directclr_loss"

    def __init__(self, backbone, d0: int, temperature: float = 0.1, negatives: str = "both_views") -> None:
        super().__init__(backbone)
        self.directclr = DirectCLRLoss(d0, temperature, negatives=negatives)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.directclr(a["cls"], b["cls"])


def build_objective(cfg: Config) -> DirectCLRObjective:
    require_symmetric_loss(cfg)
    je = cfg.joint_embedding
    if je.projector_layers or je.predictor_layers:
        raise ConfigError(
            f"train.method=directclr trains without projector and predictor, but joint_embedding.projector_layers="
            f"{je.projector_layers} and predictor_layers={je.predictor_layers}; set both to 0"
        )
    backbone = build_student_backbone(cfg)
    if not 1 <= je.directclr_d0 <= backbone.embed_dim:
        raise ConfigError(
            f"invalid value for 'joint_embedding.directclr_d0': {je.directclr_d0}; must be in [1, {backbone.embed_dim}] "
            "(the backbone's width)"
        )
    return DirectCLRObjective(backbone, je.directclr_d0, je.temperature, cfg.directclr.negatives)


METHOD = register_method(
    method_spec(
        "directclr",
        "Jing et al. 2022, Understanding Dimensional Collapse in Contrastive Self-supervised Learning (DirectCLR)",
        build_objective,
        embeddings=("backbone_cls",),
        rules=(validate_temperature, validate_directclr),
        sections=(ConfigSection("directclr", DirectCLRConfig, validate_directclr_section),),
    )
)
