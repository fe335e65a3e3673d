"""LeJEPA (Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics", arXiv:2511.08544).

Two global views and ``crops.local_crops_number`` local views per image (the release's recipe: 2 + 6) ->
backbone CLS -> projector (the family's ``joint_embedding`` projector keys; the release's is
Linear-BN-ReLU x 2, Linear) -> :class:`dinolite.losses.lejepa_loss.LeJEPALoss`: every view's embedding
towards the mean of the global views' embeddings, plus ``lambda`` x SIGReg over the global batch. No EMA
teacher, no stop-gradient, no predictor: the evaluated network is the student.

The projector runs once on the embeddings of all views (as the release's ``self.proj(emb)`` on every
view at once), so its BatchNorm statistics are over all views of the global batch. SIGReg's directions of
iteration ``k`` are drawn from the seed ``lejepa.slice_seed + k`` (the release seeds them with its step
counter): the same on every rank and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigSection, check_ranges
from dinolite.losses.lejepa_loss import TERMS, LeJEPALoss
from dinolite.losses.sigreg_loss import slice_directions
from dinolite.train.methods.joint_embedding import (
    N_VIEWS,
    JointEmbeddingObjective,
    build_projector,
    method_spec,
    require_no_predictor,
    require_symmetric_loss,
)
from dinolite.train.methods.joint_embedding_config import JointEmbeddingConfig
from dinolite.train.methods.registry import register_method
from dinolite.train.objective import ObjectiveOutput
from dinolite.train.pretrained import build_student_backbone


@dataclass
class LeJEPAConfig:
    """LeJEPA's section (``train.method: lejepa``); views and projector are the ``joint_embedding`` and
    ``crops`` keys (2 global views, ``crops.local_crops_number`` local views)."""

    sigreg_weight: float = 0.05  # lambda: L = (1 - lambda) prediction + lambda SIGReg
    num_slices: int = 1024  # K, SIGReg's random 1-D projections per step (release README: 1024)
    t_max: float = 3.0  # Epps-Pulley integration range [-t_max, t_max] (release EppsPulley: 3)
    n_points: int = 17  # quadrature knots on [0, t_max] (release EppsPulley: 17)
    slice_seed: int = 0  # iteration k's directions come from the seed slice_seed + k


def validate_lejepa(section: LeJEPAConfig, cfg: Config) -> None:
    check_ranges(
        cfg,
        (
            ("lejepa.sigreg_weight", 0.0, 1.0, True, True),
            ("lejepa.num_slices", 1, math.inf, True, False),
            ("lejepa.t_max", 0.0, math.inf, False, False),
            ("lejepa.n_points", 2, math.inf, True, False),
            ("lejepa.slice_seed", 0, 2**62, True, True),
        ),
    )


def validate_projector(section: JointEmbeddingConfig, cfg: Config) -> None:
    """LeJEPA's rules for the family section: no predictor, no source/target sides."""
    require_no_predictor(cfg)
    require_symmetric_loss(cfg)


class LeJEPAObjective(JointEmbeddingObjective):
    """LeJEPA over all views at once; logs the two weighted terms."""

    loss_name = "lejepa_loss"

    def __init__(
        self, backbone: nn.Module, projector: nn.Module | None, loss: LeJEPALoss, num_slices: int, slice_seed: int
    ) -> None:
        super().__init__(backbone, projector)
        self.lejepa = loss
        self.num_slices, self.slice_seed = num_slices, slice_seed

    def encode(
        self, network: nn.ModuleDict, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> list[dict]:
        """Per view: ``cls`` and ``z``; the projector sees every view's CLS in one call (one BatchNorm)."""
        cls = self._cls(network["backbone"], global_views, local_views)
        if "projector" not in network:
            return [{"cls": c, "z": c} for c in cls]
        z = network["projector"](torch.cat(cls)).split(cls[0].shape[0])
        return [{"cls": c, "z": view_z} for c, view_z in zip(cls, z)]

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("LeJEPA's loss is over all views at once (LeJEPAObjective.forward)")

    def directions(self, dim: int, iteration: int) -> torch.Tensor:
        """SIGReg's slices of ``iteration`` (dim, num_slices)."""
        return slice_directions(dim, self.num_slices, self.slice_seed + iteration)

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        global_views, local_views = self._split(batch)
        views = self.encode(self.student, global_views, local_views)
        z = torch.stack([view["z"] for view in views])  # (V, N, K)
        terms = self.lejepa.terms(z, N_VIEWS, self.directions(z.shape[-1], iteration))
        loss = terms["prediction"] + terms["sigreg"]
        logged = {self.loss_name: loss, **{f"lejepa_{name}": terms[name].detach() for name in TERMS}}
        diagnostics = {
            "backbone_cls": views[0]["cls"].detach(),
            # (B, 2, D): each image's two global views, LiDAR's surrogate class (monitor/collapse.py)
            "backbone_cls_views": torch.stack([view["cls"] for view in views[:N_VIEWS]], dim=1).detach(),
        }
        if "projector" in self.student:
            diagnostics["projector"] = views[0]["z"].detach()
        return ObjectiveOutput(loss=loss, terms=logged, diagnostics=diagnostics)


def build_objective(cfg: Config) -> LeJEPAObjective:
    backbone = build_student_backbone(cfg)
    c = cfg.lejepa
    loss = LeJEPALoss(c.sigreg_weight, c.t_max, c.n_points)
    return LeJEPAObjective(backbone, build_projector(cfg, backbone.embed_dim), loss, c.num_slices, c.slice_seed)


METHOD = register_method(
    method_spec(
        "lejepa",
        "Balestriero & LeCun 2025, LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics",
        build_objective,
        rules=(validate_projector,),
        sections=(ConfigSection("lejepa", LeJEPAConfig, validate_lejepa),),
    )
)
