"""SwAV: predict the Sinkhorn cluster assignment (code) of one view from another.

Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments". Per image: two
large crops and ``crops.local_crops_number`` small ones (multi-crop; the views are the ``joint_embedding``
section's). Every crop -> backbone CLS -> projection head (one call on all crops, as the release's, so its
BatchNorm, over the global batch, sees every crop) -> L2 normalisation -> scores against ``swav.num_prototypes``
unit prototypes. The codes of the two large crops come from Sinkhorn-Knopp over the global batch (and the
feature queue, :mod:`dinolite.train.methods.swav_queue`); every other crop predicts them
(:class:`dinolite.losses.SwAVLoss`). No target network: the student is evaluated.

As released (``main_swav.py``): the prototypes are re-normalised to unit rows around every step (here after each
optimizer step and at construction, which is the same sequence of weights), and stay frozen for the first
``swav.freeze_prototypes_iters`` iterations (DINOv2's freeze: zero gradients, lr 0; the release drops their
gradients, which for SGD/LARS is the same step). The prototype layer is ``prototypes.last_layer`` so that the
optimizer flags it as the prototype layer it is. docs/faithfulness.md, "SwAV", lists what differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.distributed.collectives import get_world_size
from dinolite.losses.swav_loss import SwAVLoss
from dinolite.models import backbone_kwargs
from dinolite.monitor.collapse_rules import one_direction
from dinolite.train.methods.dinov2_objective import freeze_last_layers
from dinolite.train.methods.joint_embedding import (
    JointEmbeddingObjective,
    build_collate,
    build_projector,
    build_views,
)
from dinolite.train.methods.joint_embedding import (
    training_flops as joint_training_flops,
)
from dinolite.train.methods.joint_embedding_config import JointEmbeddingConfig, family_section
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.methods.swav_queue import FeatureQueue
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone

ASSIGN_CROPS = (0, 1)  # the release's crops_for_assign in every script: codes of the two large crops


@dataclass
class SwAVConfig:
    """SwAV's section (``train.method: swav``); views and projection head are the ``joint_embedding`` keys.
    Defaults: the released main_swav.py / scripts/swav_400ep_pretrain.sh (facebookresearch/swav 06b1b7c)."""

    num_prototypes: int = 3000  # K (--nmb_prototypes 3000)
    temperature: float = 0.1  # tau of the prediction softmax (--temperature 0.1)
    epsilon: float = 0.05  # Sinkhorn regularisation (--epsilon 0.05)
    sinkhorn_iterations: int = 3  # (--sinkhorn_iterations 3)
    # images in the feature queue, over all ranks (--queue_length; 3840 in the batch-256 scripts), rounded down to
    # a multiple of the global batch as released; 0: no queue
    queue_length: int = 0
    epoch_queue_starts: int = 15  # the queue starts filling at this epoch (--epoch_queue_starts 15)
    # the prototypes get no update for this many iterations (--freeze_prototypes_niters 313: one epoch at 4096)
    freeze_prototypes_iters: int = 313


def validate_swav(swav: SwAVConfig, cfg: Config) -> None:
    check_ranges(
        cfg,
        (
            ("swav.num_prototypes", 1, math.inf, True, False),
            ("swav.temperature", 0.0, math.inf, False, False),
            ("swav.epsilon", 0.0, math.inf, False, False),
            ("swav.sinkhorn_iterations", 1, math.inf, True, False),
            ("swav.queue_length", 0, math.inf, True, False),
            ("swav.epoch_queue_starts", 0, math.inf, True, False),
            ("swav.freeze_prototypes_iters", 0, math.inf, True, False),
        ),
    )
    if 0 < swav.queue_length < cfg.train.batch_size_per_gpu:
        raise ConfigError(
            f"invalid value for 'swav.queue_length': {swav.queue_length}; must be 0 (no queue) or at least the "
            f"global batch (train.batch_size_per_gpu={cfg.train.batch_size_per_gpu} x the ranks)"
        )


def validate_head(section: JointEmbeddingConfig, cfg: Config) -> None:
    """SwAV's rules for the family section: no predictor, no EMA target, the symmetric multi-crop pairing."""
    for key, value, ok in (
        ("predictor_layers", section.predictor_layers, section.predictor_layers == 0),
        ("target", section.target, section.target == "stopgrad"),
        ("symmetric_loss", section.symmetric_loss, section.symmetric_loss),
    ):
        if not ok:
            raise ConfigError(
                f"invalid value for 'joint_embedding.{key}': {value!r}; train.method=swav has no predictor, no EMA "
                "target and no source/target sides (set predictor_layers=0, target=stopgrad, symmetric_loss=true)"
            )


class PrototypeLayer(nn.Module):
    """``last_layer``: the prototypes as a bias-free Linear (K, dim), as the release's; the name makes the
    optimizer flag it ``is_last_layer`` (the prototype freeze)."""

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.last_layer = nn.Linear(dim, num_prototypes, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Unit rows (the release's normalisation before each step)."""
        self.last_layer.weight.copy_(F.normalize(self.last_layer.weight, dim=1, p=2))

    def forward(self, z: Tensor) -> Tensor:
        return self.last_layer(z)


class SwAVObjective(SSLObjective):
    """Student = ``{backbone, projector, prototypes}``; no teacher (see the module docstring)."""

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module | None,
        prototypes: PrototypeLayer,
        loss: SwAVLoss,
        queue: FeatureQueue | None = None,
        queue_start: int = 0,
        freeze_prototypes_iters: int = 0,
    ) -> None:
        super().__init__()
        modules: dict[str, nn.Module] = {"backbone": backbone}
        if projector is not None:
            modules["projector"] = projector
        modules["prototypes"] = prototypes
        self.student = nn.ModuleDict(modules)
        self.teacher = nn.ModuleDict()
        self.loss = loss
        self.queue = queue
        self.queue_start = queue_start  # iteration at which the queue starts filling
        self.freeze_prototypes_iters = freeze_prototypes_iters

    def embed(self, batch: dict[str, Any]) -> tuple[list[Tensor], Tensor]:
        """Per crop, the backbone CLS (B, D_backbone); and the unit projections of all crops, crop-major
        (V * B, dim): one projector call on every crop (one set of BatchNorm statistics, as released)."""
        global_views, local_views = JointEmbeddingObjective._split(batch)
        cls = JointEmbeddingObjective._cls(self.student["backbone"], global_views, local_views)
        z = torch.cat(cls)
        if "projector" in self.student:
            z = self.student["projector"](z)
        return cls, F.normalize(z.float(), dim=1, p=2)

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        cls, z = self.embed(batch)
        n_images = cls[0].shape[0]
        scores = list(self.student["prototypes"](z).split(n_images))
        embeddings = z.detach().split(n_images)
        queue_scores = None
        if self.queue is not None and iteration >= self.queue_start:
            with torch.no_grad():
                queued = [self.queue.own(i) for i in range(len(ASSIGN_CROPS))]
                queue_scores = [None if q is None else self.student["prototypes"](q) for q in queued]
                for i, crop in enumerate(ASSIGN_CROPS):
                    self.queue.push(i, embeddings[crop])
                self.queue.step_done()
        out = self.loss(scores, ASSIGN_CROPS, queue_scores)
        diagnostics = {
            "backbone_cls": cls[0].detach(),
            "backbone_cls_views": torch.stack(cls[:2], dim=1).detach(),
            "projector": embeddings[0],
            "teacher_head_probs": out["codes"][0],
            # scores are cosine similarities: the monitor divides them by swav.temperature (MethodSpec.student_temp)
            "student_head_logits": scores[0].detach(),
        }
        return ObjectiveOutput(loss=out["loss"], terms={"swav_loss": out["loss"]}, diagnostics=diagnostics)

    def after_backward(self, iteration: int, optimizer: torch.optim.Optimizer) -> None:
        if iteration < self.freeze_prototypes_iters:
            freeze_last_layers(self.student, optimizer)

    def after_optimizer_step(self, iteration: int) -> None:
        self.student["prototypes"].normalize_()


def build_objective(cfg: Config) -> SwAVObjective:
    c = cfg.swav
    backbone = build_student_backbone(cfg)
    projector = build_projector(cfg, backbone.embed_dim)
    dim = projector.out_dim if projector is not None else backbone.embed_dim
    loss = SwAVLoss(c.temperature, c.epsilon, c.sinkhorn_iterations)
    queue = None
    if c.queue_length:
        queue = FeatureQueue(c.queue_length, len(ASSIGN_CROPS), cfg.train.batch_size_per_gpu, dim, get_world_size())
    return SwAVObjective(
        backbone,
        projector,
        PrototypeLayer(dim, c.num_prototypes),
        loss,
        queue,
        queue_start=c.epoch_queue_starts * cfg.train.iterations_per_epoch,
        freeze_prototypes_iters=c.freeze_prototypes_iters,
    )


def training_flops(cfg: Config) -> dict[str, Any]:
    """The joint-embedding count (backbone and projector on every crop) plus the prototype scores of every crop
    (forward + backward: 3 x the forward's multiply-adds, 2 FLOPs each)."""
    flops = joint_training_flops(cfg)
    je = cfg.joint_embedding
    dim = (
        je.projector_out_dim
        if je.projector_layers
        else backbone_kwargs(cfg.student, cfg.crops.global_crops_size)["embed_dim"]
    )
    crops = 2 + cfg.crops.local_crops_number
    prototypes = 2 * 3 * crops * dim * cfg.swav.num_prototypes
    flops["flops_prototypes_per_image"] = prototypes
    flops["flops_student_per_image"] += prototypes
    flops["flops_per_image"] += prototypes
    flops["flops_per_batch"] = flops["flops_per_image"] * cfg.train.batch_size_per_gpu
    return flops


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("projector", "prototypes") if cfg.joint_embedding.projector_layers else ("prototypes",)


METHOD = register_method(
    MethodSpec(
        name="swav",
        paper="Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (SwAV)",
        build_objective=build_objective,
        build_transform=build_views,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        head_names=head_names,
        demo_preset="demo_swav",
        monitor_embeddings={"backbone_cls": "backbone", "projector": "projector"},
        # Sinkhorn balances the codes by construction, so collapse shows on the projections (one direction)
        watchdog_thresholds=(one_direction("projector", after_iteration=100, patience=2),),
        config_sections=(family_section(validate_head), ConfigSection("swav", SwAVConfig, validate_swav)),
        student_temp=lambda cfg: cfg.swav.temperature,
    )
)
