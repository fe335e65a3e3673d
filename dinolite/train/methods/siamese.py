"""SimSiam and BYOL: one objective, the switches of Chen & He 2021 and Grill et al. 2020.

* SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning"): backbone -> projector
  -> predictor on both views; ``L = 1/2 D(p_A, sg(z_B)) + 1/2 D(p_B, sg(z_A))`` with ``D`` the negative
  cosine (:class:`dinolite.losses.NegativeCosineLoss`). ``joint_embedding.target=stopgrad``.
* BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): the same loss with ``z`` from an EMA copy of
  backbone + projector (``joint_embedding.target=ema``), momentum cosine-scheduled from
  ``ema.momentum`` to ``ema.final_momentum`` (the shared ``ema`` section).

Switches, to provoke the collapses the papers report: ``joint_embedding.stop_gradient=false`` (SimSiam
without stop-gradient collapses to a constant, Chen & He Fig. 2), ``joint_embedding.predictor_layers=0``
(no predictor: collapses too, Chen & He Table 1). ``joint_embedding.symmetric_loss=false`` keeps one
direction, view 0 (source) -> view 1 (target), and makes local crops sources only: the asymmetric setting of
Wang et al. 2022, in which stronger augmentation or multi-crop on the source side helps. Both methods evaluate the online (student) backbone,
as the papers do; ``--network teacher`` picks BYOL's target.
"""

from __future__ import annotations

import torch

from dinolite.config import Config
from dinolite.losses import NegativeCosineLoss
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    build_predictor,
    build_projector,
    method_spec,
    target_momentum_schedule,
)
from dinolite.train.methods.joint_embedding_config import validate_siamese
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone


class SiameseObjective(JointEmbeddingObjective):
    """Symmetric negative cosine between one view's prediction and the other's (target) projection."""

    loss_name = "negative_cosine_loss"

    def __init__(
        self, backbone, projector, predictor, stop_gradient: bool = True, target_momentum=None, symmetric_loss=True
    ) -> None:
        super().__init__(backbone, projector, predictor, target_momentum, symmetric_loss)
        self.negative_cosine = NegativeCosineLoss(stop_gradient)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        target_a, target_b = a.get("target_z", a["z"]), b.get("target_z", b["z"])
        return self.negative_cosine(a["p"], b["p"], target_a, target_b)

    def directed_pair_loss(self, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.negative_cosine.directed(source["p"], target.get("target_z", target["z"]))


def build_objective(cfg: Config) -> SiameseObjective:
    backbone = build_student_backbone(cfg)
    projector = build_projector(cfg, backbone.embed_dim)
    dim = projector.out_dim if projector is not None else backbone.embed_dim
    return SiameseObjective(
        backbone,
        projector,
        build_predictor(cfg, dim),
        stop_gradient=cfg.joint_embedding.stop_gradient,
        target_momentum=target_momentum_schedule(cfg),
        symmetric_loss=cfg.joint_embedding.symmetric_loss,
    )


ALL_EMBEDDINGS = ("backbone_cls", "projector", "predictor")
# One objective, two registry entries: the presets differ (target stopgrad vs ema), the switches are shared.
SIMSIAM = register_method(
    method_spec(
        "simsiam",
        "Chen & He 2021, Exploring Simple Siamese Representation Learning (SimSiam)",
        build_objective,
        embeddings=ALL_EMBEDDINGS,
        rules=(validate_siamese,),
    )
)
BYOL = register_method(
    method_spec(
        "byol",
        "Grill et al. 2020, Bootstrap Your Own Latent (BYOL)",
        build_objective,
        embeddings=ALL_EMBEDDINGS,
        rules=(validate_siamese,),
    )
)
