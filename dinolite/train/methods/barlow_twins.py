"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

Two views per image -> backbone CLS -> projector MLP (paper: 3 layers of 8192, BatchNorm + ReLU between,
global statistics) -> :class:`dinolite.losses.BarlowTwinsLoss` with ``joint_embedding.lambda_offdiag``,
its cross-correlation over the global batch. No target network: the evaluated network is the student.

The ``barlow_twins`` section holds Barlow Twins' faithfulness options (docs/faithfulness.md, Barlow Twins);
``lambda`` stays ``joint_embedding.lambda_offdiag`` (saved runs name it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dinolite.config import Config, ConfigSection, check_choices
from dinolite.losses import BarlowTwinsLoss
from dinolite.losses.barlow_twins_loss import NORMALIZATIONS
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    build_projector,
    method_spec,
    require_symmetric_loss,
)
from dinolite.train.methods.joint_embedding_config import validate_barlow_twins
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins' section (``train.method: barlow_twins``); views and projector are ``joint_embedding``'s."""

    # exact: C is the correlation the paper defines (centred, divided by the norms). batchnorm: the release's
    # BatchNorm1d(affine=False), eps 1e-5, which shrinks C by sqrt(var / (var + eps)) per dimension
    # (facebookresearch/barlowtwins 8e8d284 main.py:205, 212-215)
    normalization: str = "exact"
    # the projector's last Linear has a bias; the release's has none (main.py:201). The loss centres the
    # batch, so the bias gets no gradient: false removes a dead parameter
    projector_last_bias: bool = True


def validate_barlow_twins_section(section: BarlowTwinsConfig, cfg: Config) -> None:
    check_choices(cfg, {"barlow_twins.normalization": NORMALIZATIONS})


class BarlowTwinsObjective(JointEmbeddingObjective):
    """Barlow Twins' loss between the projector outputs of two views (see the module docstring)."""

    loss_name = "barlow_twins_loss"

    def __init__(self, backbone, projector, lambda_offdiag: float = 5e-3, normalization: str = "exact") -> None:
        super().__init__(backbone, projector)
        self.barlow_twins = BarlowTwinsLoss(lambda_offdiag, normalization)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.barlow_twins(a["z"], b["z"])


def build_objective(cfg: Config) -> BarlowTwinsObjective:
    require_symmetric_loss(cfg)
    backbone = build_student_backbone(cfg)
    section = cfg.barlow_twins
    projector = build_projector(cfg, backbone.embed_dim, last_bias=section.projector_last_bias)
    return BarlowTwinsObjective(backbone, projector, cfg.joint_embedding.lambda_offdiag, section.normalization)


METHOD = register_method(
    method_spec(
        "barlow_twins",
        "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
        build_objective,
        rules=(validate_barlow_twins,),
        sections=(ConfigSection("barlow_twins", BarlowTwinsConfig, validate_barlow_twins_section),),
    )
)
