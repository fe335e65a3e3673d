"""DINOv2 as a registered method (``train.method: dinov2``): the objective built from the config (student,
heads, losses, pretrained weights), its multi-crop views and iBOT-masking collate, its training FLOPs,
head names, collapse-watchdog thresholds and config sections (``dino``, ``ibot``, ``teacher``:
:mod:`dinolite.train.methods.dinov2_config`; ``gram``, DINOv3's Gram anchoring: :mod:`dinolite.train.gram_config`).

The objective itself (DINO + iBOT + KoLeo with an EMA teacher, its formula and schedules) is
:mod:`dinolite.train.methods.dinov2_objective`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from dinolite.config import Config, ConfigError
from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.collate import collate_data_and_cast
from dinolite.data.masking import MaskingGenerator
from dinolite.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinolite.models import backbone_kwargs, build_heads
from dinolite.models.info import backbone_forward_macs, model_summary
from dinolite.monitor.collapse_rules import TEACHER_MEAN_ENTROPY, one_direction, one_prototype, uniform_output
from dinolite.train.gram_config import GRAM_SECTION
from dinolite.train.methods import dinov2_config
from dinolite.train.methods.dinov2_objective import DINOv2Objective, DINOv2Schedules
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.pretrained import build_student_backbone, load_pretrained, load_pretrained_into, pretrained_part


def check_koleo_batch(cfg: Config) -> None:
    """KoLeo needs two images per GPU: refuse a config that gives it one (DINOv2 and distillation)."""
    if cfg.dino.koleo_loss_weight > 0 and cfg.train.batch_size_per_gpu < 2:
        raise ConfigError(
            f"train.batch_size_per_gpu={cfg.train.batch_size_per_gpu} with dino.koleo_loss_weight="
            f"{cfg.dino.koleo_loss_weight}: KoLeo needs at least 2 images per GPU (the nearest neighbour of a "
            "lone sample does not exist); raise the batch size or set dino.koleo_loss_weight=0"
        )


def build_objective(cfg: Config) -> DINOv2Objective:
    """Build the DINOv2 objective from a full :class:`~dinolite.config.Config` (student, heads, losses)."""
    check_koleo_batch(cfg)
    # Before the teacher copy is taken, so student and teacher start from the same weights.
    path = cfg.student.pretrained_weights
    pretrained = load_pretrained(path) if path else None
    backbone = build_student_backbone(cfg, pretrained)
    heads = build_heads(cfg.dino, cfg.ibot, backbone.embed_dim)
    if pretrained is not None:
        if pretrained.heads is not None:  # an export made --with-heads: continue pretraining
            load_pretrained_into(heads["dino_head"], pretrained_part(pretrained.heads, "dino_head"), "dino_head", path)
            if cfg.ibot.separate_head:
                ibot_state = pretrained_part(pretrained.heads, "ibot_head")
                if not ibot_state:
                    raise ConfigError(
                        f"student.pretrained_weights={path!r}: ibot.separate_head=true but the export holds "
                        "no ibot_head (it was trained with a shared head)"
                    )
                load_pretrained_into(heads["ibot_head"], ibot_state, "ibot_head", path)
    objective = DINOv2Objective(
        backbone=backbone,
        dino_head=heads["dino_head"],
        ibot_head=heads["ibot_head"] if cfg.ibot.separate_head else None,
        **loss_arguments(cfg),
    )
    if pretrained is not None and pretrained.heads is not None:
        extra = pretrained_part(pretrained.heads, "extra")
        if extra:
            objective.load_extra_state(extra)
    return objective


def loss_arguments(cfg: Config) -> dict[str, Any]:
    """:class:`DINOv2Objective`'s arguments besides the student: the three losses, their weights, the
    centring and the schedules (distillation builds its objective with the same)."""
    ibot_prototypes = cfg.ibot.head_n_prototypes if cfg.ibot.separate_head else cfg.dino.head_n_prototypes
    return dict(
        dino_loss=DINOLoss(cfg.dino.head_n_prototypes, cfg.teacher.student_temp, cfg.teacher.center_momentum),
        ibot_loss=iBOTPatchLoss(ibot_prototypes, cfg.teacher.student_temp, cfg.teacher.center_momentum),
        koleo_loss=KoLeoLoss(),
        dino_weight=cfg.dino.loss_weight,
        ibot_weight=cfg.ibot.loss_weight,
        koleo_weight=cfg.dino.koleo_loss_weight,
        centering=cfg.train.centering,
        sinkhorn_iterations=cfg.teacher.sinkhorn_iterations,
        schedules=DINOv2Schedules.from_config(cfg),
    )


# ------------------------------------------------------------------------------------------ views
def build_transform(cfg: Config) -> MultiCropAugmentation:
    """Multi-crop views: 2 global + ``crops.local_crops_number`` local crops per image."""
    return MultiCropAugmentation.from_config(cfg.crops)


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    """DINOv2's collate: crops stacked crop-major, iBOT block masks on the global crops."""
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    n_tokens = grid * grid
    # As DINOv2: at most half of the patches in one block-mask draw.
    mask_generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=int(0.5 * n_tokens))
    return functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
        dtype=torch.float32,
    )


# ------------------------------------------------------------------------------------------ FLOPs
def training_flops(cfg: Config, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nominal FLOPs (= 2 x MACs) of one DINOv2 training iteration, per image and per GPU batch.

    With ``g``/``l`` the backbone MACs of a global/local crop, ``h_d``/``h_i`` the DINO/iBOT head MACs
    per token, ``N`` local crops and ``m`` the expected masked patches per global crop
    (``mask_sample_probability * mean(mask_ratio_min_max) * patches``, 0 without iBOT)::

        student forward = 2 (g + h_d) + N (l + h_d) + 2 m h_i      (backward = 2 x forward)
        teacher forward = 2 (g + h_d) + 2 m h_i
        gram teacher forward = 2 g  (with gram.use_loss and a separate Gram teacher; else 0)
        FLOPs per image = 2 x (3 x student forward + teacher forward + gram teacher forward)

    Keys: ``flops_global_crop`` / ``flops_local_crop`` (backbone forward, one crop),
    ``flops_student_per_image`` (forward + backward), ``flops_teacher_per_image`` (forward),
    ``flops_gram_teacher_per_image`` (forward),
    ``flops_per_image``, ``flops_per_batch`` (``train.batch_size_per_gpu`` images),
    ``masked_patches_per_global_crop``, plus the inputs of the formula.
    """
    s = summary if summary is not None else model_summary(cfg)
    n_patches = (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    lo, hi = cfg.ibot.mask_ratio_min_max
    masked = cfg.ibot.mask_sample_probability * (lo + hi) / 2 * n_patches if cfg.ibot.loss_weight > 0 else 0.0
    g, loc = s["macs_global_crop"], s["macs_local_crop"]
    h_dino, h_ibot = s["macs_dino_head_per_token"], s["macs_ibot_head_per_token"]
    n_local = cfg.crops.local_crops_number
    student_forward = 2 * (g + h_dino) + n_local * (loc + h_dino) + 2 * masked * h_ibot
    teacher_forward = 2 * (g + h_dino) + 2 * masked * h_ibot
    gram = getattr(cfg, "gram", None)
    # Gram anchoring's own frozen teacher sees the 2 global crops, or its own crops at
    # crops.gram_teacher_crops_size (the Gram matrices themselves are negligible)
    gram_forward = (
        2 * _gram_teacher_crop_macs(cfg, g) if gram is not None and gram.use_loss and not gram.ema_teacher else 0
    )
    per_image = 2 * (3 * student_forward + teacher_forward + gram_forward)
    return {
        "flops_global_crop": 2 * g,
        "flops_local_crop": 2 * loc,
        "flops_dino_head_per_token": 2 * h_dino,
        "flops_ibot_head_per_token": 2 * h_ibot,
        "masked_patches_per_global_crop": masked,
        "local_crops_number": n_local,
        "flops_student_per_image": int(round(2 * 3 * student_forward)),
        "flops_teacher_per_image": int(round(2 * teacher_forward)),
        "flops_gram_teacher_per_image": int(round(2 * gram_forward)),
        "flops_per_image": int(round(per_image)),
        "batch_size_per_gpu": cfg.train.batch_size_per_gpu,
        "flops_per_batch": int(round(per_image * cfg.train.batch_size_per_gpu)),
    }


def _gram_teacher_crop_macs(cfg: Config, global_crop_macs: int) -> int:
    size = cfg.crops.gram_teacher_crops_size
    if size is None or size == cfg.crops.global_crops_size:
        return global_crop_macs
    return backbone_forward_macs(backbone_kwargs(cfg.student, size), size)


def head_names(cfg: Config) -> tuple[str, ...]:
    """The student heads: the DINO head, and the iBOT head when it is a separate module."""
    return ("dino_head", "ibot_head") if cfg.ibot.separate_head else ("dino_head",)


# Tuned so healthy runs are never flagged: early in training a healthy run looks collapsed to the
# backbone and uniform rules (LayerScale 1e-5 makes every CLS feature nearly the same and centering then
# flattens the teacher), so those two wait for the end of the default warm-up (optim.warmup_epochs 10 x
# train.iterations_per_epoch 1250). Measured: docs/monitor.md#collapse-rules.
WATCHDOG_THRESHOLDS = (
    # one prototype (e.g. no centering), in nats: exp(entropy) is the number of prototypes in use, so
    # 0.3 (1.35 prototypes) means the same whatever K is; the only rule unambiguous early in training
    one_prototype(min=0.3, stat=TEACHER_MEAN_ENTROPY, after_iteration=20, patience=3),
    # uniform output: every teacher output ~flat over the K prototypes (entropy / ln K -> 1)
    uniform_output(max=0.995, after_iteration=12500, patience=5),
    # one direction: every CLS feature of the backbone points the same way (RankMe ~1)
    one_direction("backbone", after_iteration=12500, patience=5),
)

METHOD = register_method(
    MethodSpec(
        name="dinov2",
        paper="Oquab et al. 2023, DINOv2 (DINO + iBOT + KoLeo with an EMA teacher)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="teacher",
        head_names=head_names,
        demo_preset="demo",
        monitor_embeddings={
            "teacher_cls": "backbone",
            "student_cls": "student_backbone",
            "teacher_head_logits": "head",
        },
        watchdog_thresholds=WATCHDOG_THRESHOLDS,
        config_sections=(*dinov2_config.SECTIONS, GRAM_SECTION),
        student_temp=lambda cfg: cfg.teacher.student_temp,
        # DINO (Caron et al. 2021) and iBOT (Zhou et al. 2022) as presets of this objective; DINOv3's RoPE ViT
        recipe_presets=("demo_dino", "demo_ibot", "demo_rope"),
    )
)
