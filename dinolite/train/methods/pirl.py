"""PIRL (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant Representations", CVPR).

The representation of an image should not change under a pretext transform (the jigsaw): the original view
``v_I`` gives ``f(v_I)`` = backbone CLS -> image head; the jigsaw view (:mod:`dinolite.data.jigsaw`: a 3 x 3
grid of tiles in a random order) gives ``g(v_I^t)``: every tile encoded by the same backbone on its own, each
tile's CLS through the tile head, the tile embeddings concatenated in the permuted order and projected by one
Linear. The loss (:class:`dinolite.losses.PIRLLoss`) contrasts both with the image's memory ``m_I`` against
``K`` memories of the bank (:class:`~dinolite.train.methods.pirl_bank.MemoryBank`), weighted ``lambda`` and
``1 - lambda``; the bank then moves towards the normalised ``f(v_I)`` of the global batch.

Heads as released (facebookresearch/vissl, ``configs/config/pretrain/pirl/models/resnet50_mlphead.yaml``, the
MLP-head PIRL of VISSL's model zoo): image head Linear-ReLU-Linear (2048 -> 2048 -> 128, no BatchNorm); tile
head the same on every tile, then the 9 x 128 concatenation and a Linear to 128. (The paper's own heads,
``pirl_jigsaw_4node_resnet.yaml``, are single Linears: ``pirl.head_hidden_dim`` cannot express them.)
The evaluated network is the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.data.jigsaw import JigsawViews, collate_jigsaw
from dinolite.losses import PIRLLoss
from dinolite.models import ProjectionMLP, backbone_kwargs
from dinolite.models.info import backbone_forward_macs
from dinolite.monitor.collapse_rules import one_direction
from dinolite.train.methods.joint_embedding import view_recipe
from dinolite.train.methods.joint_embedding_config import ViewConfig
from dinolite.train.methods.pirl_bank import MemoryBank, global_batch, own_rows
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone


@dataclass
class PIRLConfig:
    """PIRL's section (``train.method: pirl``). Defaults: the paper's / the release's ResNet-50 ImageNet values;
    the image view's size and scale are ``crops.global_crops_size`` / ``global_crops_scale``."""

    temperature: float = 0.07  # tau (paper Sec. 4; vissl nce_loss_with_memory temperature)
    jigsaw_weight: float = 0.5  # lambda of Eq. 5 (paper Sec. 3.3 / 4)
    memory_momentum: float = 0.5  # weight of the old memory (paper Sec. 3.2, vissl memory_params.momentum)
    num_negatives: int = 32000  # K memories per image and term (paper Sec. 4)
    memory_bank_size: int = 1281167  # slots: >= the number of training images (ImageNet-1k train)
    grid: int = 3  # tiles per side of the jigsaw (paper: 3 x 3)
    jigsaw_crop_size: int = 255  # the jigsaw crop's side, grid x cell (vissl ImgPilToPatchesAndImage: 255)
    jigsaw_crop_scale: list[float] = field(default_factory=lambda: [0.6, 1.0])  # its random resized crop scale
    tile_size: int = 64  # tile side inside each cell (vissl: 64 in 85 px cells); a multiple of the patch size
    head_hidden_dim: int = 2048  # image and tile heads' hidden width (vissl: 2048)
    out_dim: int = 128  # the embedding the loss and the bank see (vissl: 128)
    # BatchNorm after the heads' hidden Linear: not in the release (its ResNet heads have none); the demo ViT's
    # embeddings collapse without it (docs/methods_joint_embedding.md, PIRL)
    head_batch_norm: bool = False
    image_view: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.0))  # the original view's colours
    jigsaw_view: ViewConfig = field(default_factory=lambda: ViewConfig(blur_p=0.0))  # the jigsaw crop's colours


def validate_pirl(section: PIRLConfig, cfg: Config) -> None:
    check_ranges(
        cfg,
        (
            ("pirl.temperature", 0.0, math.inf, False, False),
            ("pirl.jigsaw_weight", 0.0, 1.0, True, True),
            ("pirl.memory_momentum", 0.0, 1.0, True, False),
            ("pirl.num_negatives", 1, math.inf, True, False),
            ("pirl.memory_bank_size", 1, math.inf, True, False),
            ("pirl.grid", 1, math.inf, True, False),
            ("pirl.head_hidden_dim", 1, math.inf, True, False),
            ("pirl.out_dim", 1, math.inf, True, False),
        ),
    )
    patch = cfg.student.patch_size
    if section.tile_size < patch or section.tile_size % patch:
        raise ConfigError(
            f"invalid value for 'pirl.tile_size': {section.tile_size}; the backbone encodes every tile, so it must be "
            f"a multiple of student.patch_size ({patch})"
        )
    if section.jigsaw_crop_size % section.grid or section.jigsaw_crop_size // section.grid < section.tile_size:
        raise ConfigError(
            f"invalid value for 'pirl.jigsaw_crop_size': {section.jigsaw_crop_size}; must be pirl.grid "
            f"({section.grid}) x a cell of at least pirl.tile_size ({section.tile_size}) pixels"
        )
    if cfg.crops.local_crops_number:
        raise ConfigError(
            f"invalid value for 'crops.local_crops_number': {cfg.crops.local_crops_number}; PIRL has no small "
            "crops (set it to 0)"
        )


def build_views(cfg: Config) -> JigsawViews:
    c, crops = cfg.pirl, cfg.crops
    jigsaw_scale = (float(c.jigsaw_crop_scale[0]), float(c.jigsaw_crop_scale[1]))
    return JigsawViews(
        view_recipe(c.image_view, crops.global_crops_size, crops.global_crops_scale, "pirl.image_view"),
        view_recipe(c.jigsaw_view, c.jigsaw_crop_size, jigsaw_scale, "pirl.jigsaw_view"),
        grid=c.grid,
        tile=c.tile_size,
        mean=crops.mean,
        std=crops.std,
    )


def build_collate(cfg: Config) -> Any:
    return collate_jigsaw


class JigsawHead(nn.Module):
    """``g``: each tile's feature -> Linear-ReLU-Linear (``out``), the ``tiles`` outputs concatenated in the
    given (permuted) order -> Linear to ``out``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, tiles: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.tile = ProjectionMLP(in_dim, hidden_dim, out_dim, 2, batch_norm=batch_norm)
        self.mix = nn.Linear(tiles * out_dim, out_dim)
        self.tiles = tiles

    def forward(self, tile_features: torch.Tensor) -> torch.Tensor:
        """(B * tiles, D) features, image-major -> (B, out)."""
        return self.mix(self.tile(tile_features).reshape(-1, self.tiles * self.mix.out_features))


class PIRLObjective(SSLObjective):
    """Jigsaw and original view against the memory bank (see the module docstring)."""

    def __init__(
        self, backbone: nn.Module, image_head: nn.Module, jigsaw_head: JigsawHead, loss: PIRLLoss, bank: MemoryBank
    ) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "image_head": image_head, "jigsaw_head": jigsaw_head})
        self.teacher = nn.ModuleDict()  # no target network: the memory bank plays its part
        self.loss = loss
        self.bank = bank

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        images, tiles = batch["collated_images"], batch["collated_tiles"]
        n_images = images.shape[0]
        outs = self.student["backbone"].forward_features_list([images, tiles.flatten(0, 1)], [None, None])
        cls, tile_cls = outs[0]["x_norm_clstoken"], outs[1]["x_norm_clstoken"]
        image_embedding = self.student["image_head"](cls)
        jigsaw_embedding = self.student["jigsaw_head"](tile_cls)
        slots = self.bank.slots(global_batch(batch["image_ids"].to(images.device)))
        jigsaw_slots, image_slots = (own_rows(s, n_images) for s in self.bank.draw(slots, iteration))
        out = self.loss(jigsaw_embedding, image_embedding, self.bank.memory, jigsaw_slots, image_slots)
        # The bank moves after the scores, with f(v_I) of the global batch (the release's update_mem_with_emb_index).
        normalised = F.normalize(image_embedding.detach().float(), dim=1)
        self.bank.update(global_batch(normalised), slots)
        terms = {
            "pirl_loss": out["loss"],
            "jigsaw_loss": out["jigsaw_loss"].detach(),
            "image_loss": out["image_loss"].detach(),
        }
        diagnostics = {"backbone_cls": cls.detach(), "projector": image_embedding.detach()}
        return ObjectiveOutput(loss=out["loss"], terms=terms, diagnostics=diagnostics)


def build_objective(cfg: Config) -> PIRLObjective:
    c = cfg.pirl
    backbone = build_student_backbone(cfg)
    dim = backbone.embed_dim
    return PIRLObjective(
        backbone,
        ProjectionMLP(dim, c.head_hidden_dim, c.out_dim, 2, batch_norm=c.head_batch_norm),
        JigsawHead(dim, c.head_hidden_dim, c.out_dim, c.grid * c.grid, c.head_batch_norm),
        PIRLLoss(c.temperature, c.jigsaw_weight),
        MemoryBank(c.memory_bank_size, c.out_dim, c.memory_momentum, c.num_negatives, cfg.train.seed),
    )


def training_flops(cfg: Config) -> dict[str, Any]:
    """Nominal FLOPs (2 x multiply-adds) of one iteration: backbone + heads on the image view and on the
    ``grid^2`` tiles, forward + backward (3 x the forward); the bank's scores ``2 (1 + K) D`` per term."""
    c = cfg.pirl
    size = cfg.crops.global_crops_size
    kwargs = backbone_kwargs(cfg.student, size)
    dim, tiles = kwargs["embed_dim"], c.grid * c.grid
    head = dim * c.head_hidden_dim + c.head_hidden_dim * c.out_dim
    forward = backbone_forward_macs(kwargs, size) + head
    forward += tiles * (backbone_forward_macs(kwargs, c.tile_size) + head) + tiles * c.out_dim * c.out_dim
    scores = 2 * (1 + c.num_negatives) * c.out_dim
    per_image = 2 * 3 * (forward + scores)
    return {
        "flops_global_crop": 2 * backbone_forward_macs(kwargs, size),
        "flops_local_crop": 2 * backbone_forward_macs(kwargs, c.tile_size),
        "flops_student_per_image": per_image,
        "flops_teacher_per_image": 0,
        "flops_per_image": per_image,
        "flops_per_batch": per_image * cfg.train.batch_size_per_gpu,
    }


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("image_head", "jigsaw_head")


METHOD = register_method(
    MethodSpec(
        name="pirl",
        paper="Misra & van der Maaten 2020, Self-Supervised Learning of Pretext-Invariant Representations (PIRL)",
        build_objective=build_objective,
        build_transform=build_views,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        head_names=head_names,
        demo_preset="demo_pirl",
        monitor_embeddings={"backbone_cls": "backbone", "projector": "projector"},
        watchdog_thresholds=(one_direction("projector", after_iteration=100, patience=2),),
        config_sections=(ConfigSection("pirl", PIRLConfig, validate_pirl),),
    )
)
