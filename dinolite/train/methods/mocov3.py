"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

Two views per image. The online network is backbone CLS -> projector -> predictor and gives the queries; a
momentum encoder (an EMA copy of backbone + projector, no predictor) gives the keys; the loss is
:class:`dinolite.losses.MoCoV3Loss`, the symmetrised InfoNCE of each view's queries against the other view's
keys of the global batch, at temperature ``mocov3.temperature``, scaled by ``2 tau``. The evaluated network is
the online backbone (the release's ``base_encoder``, which its DeiT conversion exports).

Shapes follow the release (facebookresearch/moco-v3 ``c349e6e``, ``moco/builder.py:36-52`` and ``:114-122``):
the ViT's projector is 3 layers (``joint_embedding.projector_*``: Linear-BN-ReLU twice, then a Linear and a
BatchNorm without affine), the predictor 2 layers (``joint_embedding.predictor_*``: Linear-BN-ReLU, then a
Linear and, for the ViT, again a BatchNorm without affine: ``_build_mlp``'s ``last_bn`` default), every Linear
without a bias. The momentum ``m`` is the shared ``ema`` section's cosine (``--moco-m 0.99 --moco-m-cos``:
0.99 -> 1 over the run).
The release moves the momentum encoder *before* the forward of iteration ``k`` with ``m(k)``
(``moco/builder.py:88-96``); dinolite moves it after the optimizer step of iteration ``k - 1`` with the same
``m(k)``, which is the same update on the same weights.

``mocov3.freeze_patch_embed`` is the paper's stability trick (Sec. 4, "random patch projection"; the release's
``--stop-grad-conv1``, ``vits.py:49-51``): the patch projection keeps its random initialisation and gets no
gradient, so no optimizer update and no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.losses import MoCoV3Loss
from dinolite.models import ProjectionMLP
from dinolite.train.ema import ema_update, run_momentum_schedule
from dinolite.train.methods.joint_embedding import JointEmbeddingObjective, build_projector, method_spec
from dinolite.train.methods.joint_embedding_config import JointEmbeddingConfig
from dinolite.train.methods.registry import register_method
from dinolite.train.pretrained import build_student_backbone
from dinolite.train.schedules import Schedule


@dataclass
class MoCoV3Config:
    """MoCo v3's section (``train.method: mocov3``); views, projector and predictor are the ``joint_embedding``
    keys, the momentum the ``ema`` section. Defaults: the release's ViT recipe (CONFIG.md)."""

    temperature: float = 0.2  # tau (release: --moco-t=.2 for every ViT; its default 1.0 is the ResNet's)
    # the random patch projection frozen (release: --stop-grad-conv1 for every ViT recipe)
    freeze_patch_embed: bool = True


def validate_mocov3(section: MoCoV3Config, cfg: Config) -> None:
    check_ranges(cfg, (("mocov3.temperature", 0.0, math.inf, False, False),))


def validate_momentum_encoder(section: JointEmbeddingConfig, cfg: Config) -> None:
    """MoCo v3's rule for the family section: the keys come from the momentum (EMA) encoder."""
    if section.target != "ema":
        raise ConfigError(
            f"invalid value for 'joint_embedding.target': {section.target!r}; train.method=mocov3 takes its keys "
            "from the momentum encoder (set it to 'ema'; its momentum is the ema section)"
        )


class MoCoV3Objective(JointEmbeddingObjective):
    """Predictor queries against momentum-encoder keys (see the module docstring)."""

    loss_name = "moco_v3_loss"

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module | None,
        predictor: nn.Module | None,
        target_momentum: Schedule,
        temperature: float = 0.2,
        symmetric_loss: bool = True,
    ) -> None:
        super().__init__(backbone, projector, predictor, target_momentum, symmetric_loss)
        self.moco_v3 = MoCoV3Loss(temperature)

    def pair_loss(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.moco_v3(a["p"], b["p"], a["target_z"], b["target_z"])

    def directed_pair_loss(self, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.moco_v3.directed(source["p"], target["target_z"])

    def after_optimizer_step(self, iteration: int) -> None:
        # The keys of iteration k + 1 come from the encoder moved with m(k + 1) (the module docstring).
        ema_update(self.teacher, self.student, self.target_momentum(iteration + 1))


def build_predictor(cfg: Config, dim: int) -> ProjectionMLP | None:
    """The release's predictor: ``joint_embedding.predictor_*`` with no bias on its last Linear."""
    je = cfg.joint_embedding
    if je.predictor_layers == 0:
        return None
    return ProjectionMLP(
        dim, je.predictor_hidden_dim, dim, je.predictor_layers, last_batch_norm=je.predictor_last_bn, last_bias=False
    )


def build_objective(cfg: Config) -> MoCoV3Objective:
    backbone = build_student_backbone(cfg)
    if cfg.mocov3.freeze_patch_embed:
        backbone.patch_embed.requires_grad_(False)
    projector = build_projector(cfg, backbone.embed_dim, last_bias=False)
    dim = projector.out_dim if projector is not None else backbone.embed_dim
    return MoCoV3Objective(
        backbone,
        projector,
        build_predictor(cfg, dim),
        run_momentum_schedule(cfg),
        cfg.mocov3.temperature,
        cfg.joint_embedding.symmetric_loss,
    )


METHOD = register_method(
    method_spec(
        "mocov3",
        "Chen, Xie & He 2021, An Empirical Study of Training Self-Supervised Vision Transformers (MoCo v3)",
        build_objective,
        embeddings=("backbone_cls", "projector", "predictor"),
        rules=(validate_momentum_encoder,),
        sections=(ConfigSection("mocov3", MoCoV3Config, validate_mocov3),),
    )
)
