"""VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR).

Two views per image -> backbone CLS -> expander (the family's projector keys: the release's is 3 layers of
8192, Linear-BN-ReLU between, BatchNorm over the global batch) -> :class:`dinolite.losses.vicreg_loss.
VICRegLoss` with the weights of the ``vicreg`` section, its variance and covariance over the global batch.
No target network, no predictor, no negatives: the evaluated network is the student.

The expander's last Linear keeps a bias by default (``ProjectionMLP``; the release's has none,
``vicreg.projector_last_bias=false``): the loss cannot see it (the invariance takes differences of the two
views, variance and covariance centre the batch), so it gets no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.losses.vicreg_loss import TERMS, VICRegLoss
from dinolite.train.methods.joint_embedding import JointEmbeddingObjective, build_projector, method_spec
from dinolite.train.methods.joint_embedding_config import JointEmbeddingConfig
from dinolite.train.methods.registry import register_method
from dinolite.train.objective import ObjectiveOutput
from dinolite.train.pretrained import build_student_backbone


@dataclass
class VICRegConfig:
    """VICReg's section (``train.method: vicreg``); views and expander are the ``joint_embedding`` keys."""

    invariance_weight: float = 25.0  # lambda, the mean-squared-error term (release: sim_coeff 25)
    variance_weight: float = 25.0  # mu, the standard-deviation hinge (release: std_coeff 25)
    covariance_weight: float = 1.0  # nu, the off-diagonal covariance term (release: cov_coeff 1)
    # the expander's last Linear has a bias (the family's projector); false: none, the release's
    # (main_vicreg.py:231). The loss cannot see it (no gradient), so it only adds a parameter.
    projector_last_bias: bool = True


def validate_vicreg(vicreg: VICRegConfig, cfg: Config) -> None:
    check_ranges(cfg, tuple((f"vicreg.{term}_weight", 0.0, math.inf, True, False) for term in TERMS))


def validate_expander(section: JointEmbeddingConfig, cfg: Config) -> None:
    """VICReg's rules for the family section: no predictor, both loss directions."""
    if section.predictor_layers:
        raise ConfigError(
            f"invalid value for 'joint_embedding.predictor_layers': {section.predictor_layers}; train.method=vicreg "
            "has no predictor (set it to 0)"
        )
    if not section.symmetric_loss:
        raise ConfigError(
            "invalid value for 'joint_embedding.symmetric_loss': false; VICReg's loss has no source and target "
            "sides (only simsiam and byol take it)"
        )


class VICRegObjective(JointEmbeddingObjective):
    """VICReg between the expander outputs of two views; logs the three weighted terms."""

    loss_name = "vicreg_loss"

    def __init__(self, backbone: nn.Module, expander: nn.Module | None, loss: VICRegLoss) -> None:
        super().__init__(backbone, expander)
        self.vicreg = loss
        self._pair_terms: list[dict[str, torch.Tensor]] = []

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = self.vicreg.terms(a["z"], b["z"])
        self._pair_terms.append(terms)
        return terms["invariance"] + terms["variance"] + terms["covariance"]

    def forward(self, batch: dict, iteration: int) -> ObjectiveOutput:
        self._pair_terms = []
        out = super().forward(batch, iteration)
        # the loss is the mean over view pairs of each pair's sum of terms: each term's mean over pairs
        terms = {
            f"vicreg_{name}": torch.stack([pair[name].float() for pair in self._pair_terms]).mean() for name in TERMS
        }
        self._pair_terms = []
        return ObjectiveOutput(loss=out.loss, terms=terms, diagnostics=out.diagnostics)


def build_objective(cfg: Config) -> VICRegObjective:
    backbone = build_student_backbone(cfg)
    c = cfg.vicreg
    loss = VICRegLoss(c.invariance_weight, c.variance_weight, c.covariance_weight)
    projector = build_projector(cfg, backbone.embed_dim, last_bias=c.projector_last_bias)
    return VICRegObjective(backbone, projector, loss)


METHOD = register_method(
    method_spec(
        "vicreg",
        "Bardes, Ponce & LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised "
        "Learning",
        build_objective,
        rules=(validate_expander,),
        sections=(ConfigSection("vicreg", VICRegConfig, validate_vicreg),),
    )
)
