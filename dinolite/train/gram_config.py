"""The ``gram`` config section: Gram anchoring (DINOv3) for any method that trains patch tokens.

Key names and defaults are DINOv3's (``gram`` in facebookresearch/dinov3 ``configs/ssl_default_config.yaml``)
so that DINOv3 users keep their overrides; the section is off by default (``use_loss: false``). What each key
does is in :mod:`dinolite.train.gram` and docs/gram_anchoring.md. A method offers the section by naming
:data:`GRAM_SECTION` among its registry entry's ``config_sections`` (DINOv2 does); with any other method,
``gram.use_loss: true`` is refused when the run is built (:func:`dinolite.train.gram.attach_gram_anchoring`).

The Gram teacher's own, higher-resolution crops are DINOv3's ``crops.gram_teacher_crops_size`` /
``crops.gram_teacher_no_distortions`` (the shared ``crops`` section; made by
:class:`dinolite.data.augment.MultiCropAugmentation`). DINOv3's keys that dinolite does not offer: ``ckpt``
(the first Gram teacher from a file; here it is always the EMA teacher, loaded at ``it_load_ema_teacher``) and
``compute_stats`` (masked/unmasked loss statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from dinolite.config import Config, ConfigError, ConfigSection, check_choices, check_ranges

TOKENS_USED = ("all", "masked", "unmasked")
# torch.nn.functional.interpolate's modes that resize a 2-D grid
RESIZE_METHODS = ("bicubic", "bilinear", "nearest", "nearest-exact", "area")


@dataclass
class GramWeightSchedule:
    """DINOv3's ``gram.loss_weight_schedule``: linear ``start -> peak`` over ``warmup_epochs``, half-cosine
    ``peak -> end`` over ``cosine_epochs`` (null: the rest of the run), then ``end``
    (:class:`dinolite.train.schedules.WarmupCosineSchedule`)."""

    start: float = 0.0
    peak: float = 0.0
    end: float = 0.0
    warmup_epochs: int = 0
    cosine_epochs: Optional[int] = None


@dataclass
class GramConfig:
    """Gram anchoring (Siméoni et al. 2025, DINOv3): match the student's patch-similarity matrices to those
    of a frozen Gram teacher (docs/gram_anchoring.md)."""

    use_loss: bool = False  # add the Gram anchoring term to the method's loss
    loss_weight: float = 1.0  # its weight (when loss_weight_schedule is null)
    loss_weight_schedule: Optional[GramWeightSchedule] = None  # {start, peak, end, warmup_epochs, cosine_epochs}
    # true: the EMA teacher's own patch features (this step's) are the target, no separate Gram teacher
    ema_teacher: bool = False
    # the iteration before which the EMA teacher is copied into the Gram teacher (>= 0 unless ema_teacher);
    # the term is 0 until then
    it_load_ema_teacher: int = -1
    rep_update: bool = True  # refresh the Gram teacher from the EMA teacher every update_frequency iterations
    update_frequency: int = 50000  # refresh after iteration it when (it + 1) % update_frequency == 0 ...
    it_first_update: int = 0  # ... and it + 1 >= it_first_update
    max_updates: Optional[int] = None  # at most this many refreshes (null: unlimited)
    normalized: bool = True  # L2-normalise the patch features (cosine similarities)
    img_level: bool = False  # true: one Gram matrix per image; false: one over the local batch's patches
    remove_neg: bool = False  # zero the negative similarities of student and teacher
    remove_only_teacher_neg: bool = False  # zero the teacher's negative similarities
    tokens_used: str = "all"  # all | masked | unmasked: the student's patches the loss compares (iBOT masks)
    # how the Gram teacher's patch grid is resized to the student's when its crops are larger
    global_teacher_resize_method: str = "bicubic"  # bicubic | bilinear | nearest | nearest-exact | area
    global_teacher_resize_antialias: bool = False  # antialias that resize (downsampling)


def validate_gram(gram: GramConfig, cfg: Config) -> None:
    """DINOv3's rules for the section (``SSLMetaArch.__init__``), plus ranges; only when ``use_loss``."""
    if not gram.use_loss:
        return
    check_choices(cfg, {"gram.tokens_used": TOKENS_USED, "gram.global_teacher_resize_method": RESIZE_METHODS})
    check_ranges(
        cfg,
        (
            ("gram.loss_weight", 0.0, math.inf, True, False),
            ("gram.update_frequency", 1, math.inf, True, False),
            ("gram.it_first_update", 0, math.inf, True, False),
        ),
    )
    if gram.max_updates is not None and gram.max_updates < 0:
        raise ConfigError(f"invalid value for 'gram.max_updates': {gram.max_updates}; must be >= 0 or null")
    if gram.remove_neg and gram.remove_only_teacher_neg:
        raise ConfigError("gram.remove_neg and gram.remove_only_teacher_neg cannot both be true")
    if gram.ema_teacher and gram.rep_update:
        raise ConfigError(
            "gram.ema_teacher=true uses the EMA teacher itself: there is no Gram teacher to refresh, so "
            "gram.rep_update must be false"
        )
    if not gram.ema_teacher and gram.it_load_ema_teacher < 0:
        raise ConfigError(
            f"invalid value for 'gram.it_load_ema_teacher': {gram.it_load_ema_teacher}; the Gram teacher is a copy "
            "of the EMA teacher taken before this iteration, so it must be >= 0 (or set gram.ema_teacher=true)"
        )
    if gram.tokens_used != "all" and gram.img_level:
        raise ConfigError(
            f"gram.tokens_used={gram.tokens_used!r} selects patches across images, which needs gram.img_level=false"
        )
    schedule = gram.loss_weight_schedule
    if schedule is not None:
        check_ranges(cfg, (("gram.loss_weight_schedule.warmup_epochs", 0, math.inf, True, False),))
        if schedule.cosine_epochs is not None and schedule.cosine_epochs < 0:
            raise ConfigError(
                f"invalid value for 'gram.loss_weight_schedule.cosine_epochs': {schedule.cosine_epochs}; must be >= 0"
            )
        cosine = schedule.cosine_epochs or 0
        if schedule.warmup_epochs + cosine > cfg.optim.epochs:
            raise ConfigError(
                f"gram.loss_weight_schedule: warmup_epochs ({schedule.warmup_epochs}) + cosine_epochs ({cosine}) "
                f"exceed optim.epochs ({cfg.optim.epochs})"
            )


GRAM_SECTION = ConfigSection("gram", GramConfig, validate_gram)
