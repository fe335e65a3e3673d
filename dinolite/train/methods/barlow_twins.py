"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Two views per image -> backbone CLS -> projector MLP (paper: 3 layers of 8192, BatchNorm + ReLU between,
global statistics) -> :class:`dinolite.losses.BarlowTwinsLoss` with ``joint_embedding.lambda_offdiag``,
its cross-correlation over the global batch. No target network: the evaluated network is the student.
"""

from __future__ import annotations

import torch

from dinolite.config import Config
from dinolite.losses import BarlowTwinsLoss
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    build_projector,
    method_spec,
    require_symmetric_loss,
)
from dinolite.train.methods.joint_embedding_config import validate_barlow_twins
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone


class BarlowTwinsObjective(JointEmbeddingObjective):
    """Barlow Twins' loss between the projector outputs of two views (see the module docstring)."""

    loss_name = "barlow_twins_loss"

    def __init__(self, backbone, projector, lambda_offdiag: float = 5e-3) -> None:
        super().__init__(backbone, projector)
        self.barlow_twins = BarlowTwinsLoss(lambda_offdiag)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.barlow_twins(a["z"], b["z"])


def build_objective(cfg: Config) -> BarlowTwinsObjective:
    require_symmetric_loss(cfg)
    backbone = build_student_backbone(cfg)
    return BarlowTwinsObjective(backbone, build_projector(cfg, backbone.embed_dim), cfg.joint_embedding.lambda_offdiag)


METHOD = register_method(
    method_spec(
        "barlow_twins",
        "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
        build_objective,
        rules=(validate_barlow_twins,),
    )
)
