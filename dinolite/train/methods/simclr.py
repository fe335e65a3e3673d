"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two views per image -> backbone CLS -> projector MLP with BatchNorm (global statistics) -> NT-Xent with
temperature ``joint_embedding.temperature`` and negatives from the global batch
(:class:`dinolite.losses.InfoNCELoss`). No target network: the evaluated network is the student.
"""

from __future__ import annotations

import torch

from dinolite.config import Config
from dinolite.losses import InfoNCELoss
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    build_projector,
    method_spec,
    require_symmetric_loss,
)
from dinolite.train.methods.joint_embedding_config import validate_temperature
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone


class SimCLRObjective(JointEmbeddingObjective):
    """NT-Xent between the projector outputs of two views (see the module docstring)."""

    loss_name = "info_nce_loss"

    def __init__(self, backbone, projector, temperature: float = 0.1) -> None:
        super().__init__(backbone, projector)
        self.info_nce = InfoNCELoss(temperature)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.info_nce(a["z"], b["z"])


def build_objective(cfg: Config) -> SimCLRObjective:
    require_symmetric_loss(cfg)
    backbone = build_student_backbone(cfg)
    return SimCLRObjective(backbone, build_projector(cfg, backbone.embed_dim), cfg.joint_embedding.temperature)


METHOD = register_method(
    method_spec(
        "simclr",
        "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations (SimCLR)",
        build_objective,
        rules=(validate_temperature,),
    )
)
