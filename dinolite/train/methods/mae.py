"""MAE: reconstruct the pixels of randomly removed patches from an encoder that sees only the rest.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners" (Sec. 3). Per image: one crop
(RandomResizedCrop, flip) and a random ``mae.mask_ratio`` (75%) of its patches removed, drawn as the
released ``random_masking`` draws them (:func:`dinolite.data.masked_views.mae_shuffle`: sort one uniform
number per patch, keep the first ``int(N * 0.25)``). The encoder (the student ViT) runs on the visible
patches and the CLS token only (``keep_indices``: removed patches never enter a block, unlike SimMIM's mask
tokens); the light decoder (:class:`dinolite.models.mae_decoder.MAEDecoder`: its own width, depth and heads,
fixed sine-cosine positions, one mask token per removed patch) predicts every patch's pixels, and the loss
(:class:`dinolite.losses.MAELoss`) is the mean squared error on the removed patches, against per-patch
normalised pixels by default (``mae.norm_pix_loss``). Pixel targets cannot collapse, so there is no teacher;
the student encoder is evaluated and exported, on its final-norm CLS token (the released linear probe's
``--cls_token``: ``main_linprobe.py`` / ``models_vit.py`` with ``global_pool=False``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import SingleViewAugmentation, collate_mae
from dinolite.data.masked_views import kept_patch_count
from dinolite.losses import MAELoss
from dinolite.models.mae_decoder import MAEDecoder
from dinolite.monitor.collapse_rules import one_direction
from dinolite.train.methods.masked_common import checked, embed_dim, flops_record, transformer_macs, vit_macs
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone

IN_CHANS = 3  # the pixel head predicts RGB patches (the data pipeline's images)


@dataclass
class MAEConfig:
    """MAE's section (``train.method: mae``). Defaults: the released ViT-B/16 recipe (facebookresearch/mae
    ``models_mae.py`` ``mae_vit_base_patch16_dec512d8b``, PRETRAIN.md). The view is one crop of
    ``crops.global_crops_size``."""

    mask_ratio: float = 0.75  # fraction of the patches removed from the encoder's input
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (PRETRAIN.md's --norm_pix_loss)
    decoder_embed_dim: int = 512  # decoder width
    decoder_depth: int = 8  # decoder transformer blocks
    decoder_num_heads: int = 16  # decoder attention heads


def validate_mae(mae: MAEConfig, cfg: Config) -> None:
    check_ranges(
        cfg,
        (
            ("mae.mask_ratio", 0.0, 1.0, True, False),
            *((f"mae.{key}", 1, math.inf, True, False) for key in ("decoder_embed_dim", "decoder_depth")),
            ("mae.decoder_num_heads", 1, math.inf, True, False),
        ),
    )
    if mae.decoder_embed_dim % mae.decoder_num_heads or mae.decoder_embed_dim % 4:
        raise ConfigError(
            f"invalid value for 'mae.decoder_embed_dim': {mae.decoder_embed_dim}; must be divisible by "
            f"mae.decoder_num_heads={mae.decoder_num_heads} and by 4 (the sine-cosine position table)"
        )
    if cfg.crops.global_crops_size % cfg.student.patch_size:
        raise ConfigError(
            f"invalid value for 'crops.global_crops_size': {cfg.crops.global_crops_size}; MAE cuts the crop into "
            f"patches of student.patch_size={cfg.student.patch_size} px, which must divide it"
        )


class MAEObjective(SSLObjective):
    """Student = ``{backbone (encoder), decoder}``; no teacher."""

    def __init__(self, backbone: nn.Module, decoder: MAEDecoder, loss: MAELoss) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "decoder": decoder})
        self.teacher = nn.ModuleDict()
        self.loss = loss

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        images, ids_keep, ids_restore = batch["images"], batch["ids_keep"], batch["ids_restore"]
        out = self.student["backbone"].forward_features(images, keep_indices=ids_keep)
        latent = torch.cat([out["x_norm_clstoken"].unsqueeze(1), out["x_norm_patchtokens"]], dim=1)
        prediction = self.student["decoder"](latent, ids_restore)
        masked = ids_restore >= ids_keep.shape[1]  # a patch's place in the shuffled order is past the kept ones
        loss = self.loss(prediction, images, masked)
        diagnostics = {
            "patch_features": out["x_norm_patchtokens"].mean(dim=1).detach(),
            "cls": out["x_norm_clstoken"].detach(),
        }
        return ObjectiveOutput(loss=loss, terms={"mae_mse": loss}, diagnostics=diagnostics)


def patch_grid(cfg: Config) -> int:
    return cfg.crops.global_crops_size // cfg.student.patch_size


def build_objective(cfg: Config) -> MAEObjective:
    c = cfg.mae
    backbone = build_student_backbone(cfg)
    decoder = checked(
        "mae",
        lambda: MAEDecoder(
            patch_grid(cfg),
            backbone.embed_dim,
            cfg.student.patch_size**2 * IN_CHANS,
            c.decoder_embed_dim,
            c.decoder_depth,
            c.decoder_num_heads,
            sincos_order=cfg.student.sincos_order,  # the decoder's table follows the encoder's
        ),
    )
    return MAEObjective(backbone, decoder, MAELoss(cfg.student.patch_size, c.norm_pix_loss))


def build_transform(cfg: Config) -> SingleViewAugmentation:
    """RandomResizedCrop (``crops.global_crops_*``) + flip (``crops.horizontal_flip_p``); no colour ops
    (main_pretrain.py's transform)."""
    recipe = CropRecipe(
        cfg.crops.global_crops_size,
        tuple(cfg.crops.global_crops_scale),
        blur_p=0.0,
        solarize_p=0.0,
        horizontal_flip_p=cfg.crops.horizontal_flip_p,
        color_jitter_p=0.0,
        grayscale_p=0.0,
    )
    return SingleViewAugmentation(recipe, cfg.crops.mean, cfg.crops.std)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    return functools.partial(collate_mae, patch_size=cfg.student.patch_size, mask_ratio=cfg.mae.mask_ratio)


def training_flops(cfg: Config) -> dict[str, Any]:
    """Encoder on the visible patches + CLS, decoder on every position (forward + backward); see
    :mod:`masked_common` for the counting rule. The decoder embeds the ``1 + K`` encoder outputs
    (``(1 + K) D Dd``), runs its blocks on ``1 + N`` tokens and predicts ``p^2 3`` pixels per patch."""
    n_patches = patch_grid(cfg) ** 2
    visible = kept_patch_count(n_patches, cfg.mae.mask_ratio, rounding="floor")
    width, decoder_width = embed_dim(cfg), cfg.mae.decoder_embed_dim
    decoder = (
        (1 + visible) * width * decoder_width
        + transformer_macs(1 + n_patches, decoder_width, cfg.mae.decoder_depth)
        + n_patches * decoder_width * IN_CHANS * cfg.student.patch_size**2
    )
    encoder = vit_macs(cfg, cfg.crops.global_crops_size, visible_patches=visible)
    return flops_record(
        encoder + decoder,
        0.0,
        cfg,
        visible_patches=visible,
        flops_encoder=round(2 * encoder),
        flops_decoder=round(2 * decoder),
    )


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("decoder",)


METHOD = register_method(
    MethodSpec(
        name="mae",
        paper="He et al. 2022, MAE (MSE on the pixels of removed patches; encoder on the visible patches only)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        head_names=head_names,
        demo_preset="demo_mae",
        monitor_embeddings={"patch_features": "backbone", "cls": "student_backbone"},
        # pixel targets cannot collapse; a dead encoder (constant features) is still worth flagging
        watchdog_thresholds=(one_direction("backbone", after_iteration=60, patience=3),),
        eval_features="cls",  # the released linear probe reads the final-norm CLS token (--cls_token)
        config_sections=(ConfigSection("mae", MAEConfig, validate_mae),),
        reads_cls_token=True,  # the decoder reads the encoder's CLS output
    )
)
