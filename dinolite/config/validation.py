"""Checks that types alone cannot express: closed choices, numeric ranges and cross-key constraints.

Every message names the dotted key, the value given and what is valid. This module holds the rules of the
shared sections; a method's rules live with its section (:mod:`dinolite.config.sections`) and run only
when ``train.method`` is that method. The helpers (:func:`check_choices`, :func:`check_ranges`,
:func:`check_positive`, :func:`check_fraction_pairs`) word every message alike, for the sections too.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping, Sequence

from dinolite.config import sections
from dinolite.config.schema import CHOICES, TRACKERS, Config, ConfigError, DataConfig

# (dotted key, low, high, low inclusive, high inclusive): closed/open intervals of single keys.
Range = tuple[str, float, float, bool, bool]


def validate(cfg: Config) -> None:
    """The shared rules, then the rules of the sections that ``train.method`` registered (none of another
    method's)."""
    _validate_shared(cfg)
    for section in sections.sections_of(cfg.train.method):
        if section.validate is not None:
            section.validate(getattr(cfg, section.name), cfg)


def check_milestones(optim: Any) -> None:
    """``optim.lr_milestones`` (epochs of ``optim.schedule: multistep``): increasing, none inside the warm-up (as
    SimMIM's release asserts), and at least one when the schedule is multistep."""
    milestones = list(optim.lr_milestones)
    if optim.schedule == "multistep" and not milestones:
        raise ConfigError(
            "invalid value for 'optim.lr_milestones': []; optim.schedule=multistep needs at least one epoch"
        )
    if milestones != sorted(set(milestones)) or any(m < optim.warmup_epochs for m in milestones):
        raise ConfigError(
            f"invalid value for 'optim.lr_milestones': {milestones}; epochs must increase and be >= "
            f"optim.warmup_epochs={optim.warmup_epochs}"
        )


def check_choices(cfg: Any, choices: Mapping[str, Sequence[str]]) -> None:
    """Each dotted key of ``choices`` holds one of its values."""
    for dotted, allowed in choices.items():
        value = get_by_path(cfg, dotted)
        if value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"invalid value for {dotted!r}: {value!r}; expected one of {', '.join(allowed)}{hint}")


def check_positive(cfg: Any, keys: Sequence[str]) -> None:
    """Each dotted key holds a number > 0."""
    for dotted in keys:
        if get_by_path(cfg, dotted) <= 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)!r}; must be > 0")


def check_fraction_pairs(cfg: Any, keys: Sequence[str]) -> None:
    """Each dotted key holds ``[low, high]`` with ``0 <= low <= high <= 1``."""
    for dotted in keys:
        lo_hi = get_by_path(cfg, dotted)
        if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
            raise ConfigError(f"invalid value for {dotted!r}: {lo_hi}; expected [low, high] with 0 <= low <= high <= 1")


def _check_gram_teacher_crops(cfg: Config) -> None:
    """``crops.gram_teacher_crops_size``: a patch-size multiple, read only by a Gram teacher (DINOv3)."""
    size = cfg.crops.gram_teacher_crops_size
    if size is None:
        if cfg.crops.gram_teacher_no_distortions:
            raise ConfigError(
                "crops.gram_teacher_no_distortions=true needs crops.gram_teacher_crops_size (the Gram teacher's "
                "own crops); without it the Gram teacher sees the student's global crops"
            )
        return
    if size < 1 or size % cfg.student.patch_size:
        raise ConfigError(
            f"invalid value for 'crops.gram_teacher_crops_size': {size}; must be a positive multiple of "
            f"student.patch_size={cfg.student.patch_size}"
        )
    gram = getattr(cfg, "gram", None)
    if gram is None or not gram.use_loss or gram.ema_teacher:
        raise ConfigError(
            f"crops.gram_teacher_crops_size={size} is read only by Gram anchoring's own teacher: it needs "
            f"gram.use_loss=true and gram.ema_teacher=false (train.method={cfg.train.method!r})"
        )


def _validate_shared(cfg: Config) -> None:
    check_choices(cfg, CHOICES)
    positive = [
        "student.patch_size",
        "crops.global_crops_size",
        "crops.local_crops_size",
        "train.batch_size_per_gpu",
        "train.iterations_per_epoch",
        "optim.epochs",
        "train.log_every",
        "train.checkpoint_every",
    ]
    for name in cfg.train.loggers:
        if name not in TRACKERS:
            raise ConfigError(f"invalid value in 'train.loggers': {name!r}; expected any of {', '.join(TRACKERS)}")
    for dotted in ("evaluation.online_every", "evaluation.online_max_train_images", "evaluation.online_max_val_images"):
        if get_by_path(cfg, dotted) < 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)!r}; must be >= 0")
    check_positive(cfg, positive)
    for dotted in ("crops.global_crops_size", "crops.local_crops_size"):
        size = get_by_path(cfg, dotted)
        if size % cfg.student.patch_size:
            raise ConfigError(
                f"invalid value for {dotted!r}: {size} is not a multiple of student.patch_size={cfg.student.patch_size}"
            )
    check_fraction_pairs(cfg, ("crops.global_crops_scale", "crops.local_crops_scale"))
    _check_gram_teacher_crops(cfg)
    if cfg.crops.local_crops_number < 0:
        raise ConfigError(f"invalid value for 'crops.local_crops_number': {cfg.crops.local_crops_number}; must be >= 0")
    if cfg.optim.nesterov and (cfg.optim.optimizer != "sgd" or cfg.optim.momentum <= 0):
        raise ConfigError(
            f"invalid value for 'optim.nesterov': true needs optim.optimizer=sgd and optim.momentum > 0 "
            f"(got optimizer={cfg.optim.optimizer!r}, momentum={cfg.optim.momentum})"
        )
    check_milestones(cfg.optim)
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        raise ConfigError(
            f"invalid value for 'optim.warmup_epochs': {cfg.optim.warmup_epochs} exceeds optim.epochs={cfg.optim.epochs}"
        )
    for i, threshold in enumerate(cfg.monitor.thresholds):
        if not threshold.metric or (threshold.min is None and threshold.max is None):
            raise ConfigError(f"monitor.thresholds[{i}]: needs a metric and at least one of min/max")
    _validate_ranges(cfg)
    validate_data(cfg.data)
    _validate_cls_token(cfg)
    if cfg.student.pos_embed == "rope":
        _validate_rope(cfg.student)


def _validate_cls_token(cfg: Config) -> None:
    """``student.cls_token=false`` only for a method whose objective reads no CLS token (unknown methods: their
    process did not register them, e.g. export reading a run's config, and builds no objective)."""
    method = cfg.train.method
    if not cfg.student.cls_token and sections.reads_cls_token(method):
        raise ConfigError(
            f"invalid value for 'student.cls_token': false, but train.method={method!r} reads the backbone's CLS "
            f"token; a CLS-free encoder is for {', '.join(sections.methods_without_cls_token())}"
        )


def _validate_rope(student: Any) -> None:
    """``student.pos_embed_rope_*`` (DINOv3's rules): ``base``, or both periods and no ``base``; augmentations off
    (null) or in range."""
    base, low, high = student.pos_embed_rope_base, student.pos_embed_rope_min_period, student.pos_embed_rope_max_period
    if (base is None) != (low is not None and high is not None) or (low is None) != (high is None):
        raise ConfigError(
            "invalid values for 'student.pos_embed_rope_base' / '_min_period' / '_max_period': "
            f"{base} / {low} / {high}; give a base, or both periods and base: null"
        )
    if (base is not None and base <= 0) or (low is not None and not 0 < low < high):
        raise ConfigError(
            f"invalid RoPE periods: base={base}, min_period={low}, max_period={high}; need base > 0 or "
            "0 < min_period < max_period"
        )
    for key, least in (("shift_coords", 0.0), ("jitter_coords", 1.0), ("rescale_coords", 1.0)):
        value = getattr(student, f"pos_embed_rope_{key}")
        if value is not None and not (math.isfinite(value) and value >= least):
            raise ConfigError(
                f"invalid value for 'student.pos_embed_rope_{key}': {value}; must be >= {least:g} or null"
            )


def validate_data(data: DataConfig) -> None:
    """Ranges of the ``data`` section's numeric keys; errors name the key, the value and the range."""
    if not 0.0 <= data.decode_errors_max_fraction <= 1.0:
        raise ConfigError(
            f"invalid value for 'data.decode_errors_max_fraction': {data.decode_errors_max_fraction!r}; must be in "
            "[0, 1] (0 stops at the first unusable sample, 1 never stops)"
        )
    for key in (
        "decode_errors_window",
        "max_image_pixels",
        "max_sample_bytes",
        "shuffle_buffer_bytes",
        "shuffle_buffer",
    ):
        value = getattr(data, key)
        if value < (0 if key == "shuffle_buffer" else 1):
            raise ConfigError(
                f"invalid value for 'data.{key}': {value!r}; must be >= {0 if key == 'shuffle_buffer' else 1}"
            )
    if data.num_workers < 0:
        raise ConfigError(f"invalid value for 'data.num_workers': {data.num_workers!r}; must be >= 0")


RANGES: tuple[Range, ...] = (
    ("optim.base_lr", 0.0, math.inf, False, False),
    ("optim.min_lr", 0.0, math.inf, True, False),
    ("optim.weight_decay", 0.0, math.inf, True, False),
    ("optim.weight_decay_end", 0.0, math.inf, True, False),
    ("optim.clip_grad", 0.0, math.inf, True, False),
    ("optim.patch_embed_lr_mult", 0.0, math.inf, True, False),
    ("optim.layerwise_decay", 0.0, 1.0, False, True),
    ("optim.adamw_beta1", 0.0, 1.0, True, False),
    ("optim.adamw_beta2", 0.0, 1.0, True, False),
    ("optim.warmup_epochs", 0, math.inf, True, False),
    ("optim.freeze_last_layer_epochs", 0, math.inf, True, False),
    ("optim.momentum", 0.0, 1.0, True, False),
    ("optim.lars_eta", 0.0, math.inf, False, False),
    ("optim.lr_1d_mult", 0.0, math.inf, True, False),
    ("optim.warmup_start_lr", 0.0, math.inf, True, False),
    ("optim.schedule_horizon", 1.0, math.inf, True, False),
    ("optim.lr_gamma", 0.0, math.inf, False, False),
    ("ema.momentum", 0.0, 1.0, True, True),
    ("ema.final_momentum", 0.0, 1.0, True, True),
    ("ema.schedule_horizon", 0.0, math.inf, False, False),
    ("student.drop_path_rate", 0.0, 1.0, True, False),
    ("train.keep_last_checkpoints", 0, math.inf, True, False),
    ("train.num_threads", 0, math.inf, True, False),
    ("evaluation.knn_k", 1, math.inf, True, False),
    ("student.num_register_tokens", 0, math.inf, True, False),
    ("monitor.every", 0, math.inf, True, False),
    ("monitor.spectrum_every", 0, math.inf, True, False),
    ("monitor.max_samples", 1, math.inf, True, False),
    ("monitor.eigenvalues", 0, math.inf, True, False),
    ("student.init_scale", 0.0, math.inf, False, False),
    ("crops.horizontal_flip_p", 0.0, 1.0, True, True),
    ("crops.color_jitter_p", 0.0, 1.0, True, True),
    ("crops.grayscale_p", 0.0, 1.0, True, True),
    ("crops.blur_p_global1", 0.0, 1.0, True, True),
    ("crops.blur_p_global2", 0.0, 1.0, True, True),
    ("crops.blur_p_local", 0.0, 1.0, True, True),
    ("crops.solarize_p_global2", 0.0, 1.0, True, True),
)
# Architecture overrides: each must be >= 1 when set (None takes the arch's value).
ARCH_OVERRIDES = ("student.embed_dim", "student.depth", "student.num_heads")


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if high == math.inf:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_ranges(cfg: Any, ranges: Sequence[Range]) -> None:
    """Each dotted key is a finite number in its interval (see :data:`RANGES`)."""
    for dotted, low, high, low_in, high_in in ranges:
        value = get_by_path(cfg, dotted)
        ok_low = value >= low if low_in else value > low
        ok_high = value <= high if high_in else value < high
        if not (ok_low and ok_high and math.isfinite(value)):
            raise ConfigError(
                f"invalid value for {dotted!r}: {value!r}; must be {_interval(low, high, low_in, high_in)}"
            )


def _validate_ranges(cfg: Config) -> None:
    """Numeric ranges and cross-key constraints; each message names the key, the value and what is valid."""
    check_ranges(cfg, RANGES)
    for dotted in ARCH_OVERRIDES:
        value = get_by_path(cfg, dotted)
        if value is not None and value < 1:
            raise ConfigError(f"invalid value for {dotted!r}: {value}; must be >= 1 (or null for the arch's value)")
    student = cfg.student
    if student.embed_dim is not None and student.num_heads is not None and student.embed_dim % student.num_heads:
        raise ConfigError(
            f"invalid value for 'student.embed_dim': {student.embed_dim}; must be a multiple of "
            f"student.num_heads={student.num_heads}"
        )
    for dotted in ("crops.mean", "crops.std"):
        values = get_by_path(cfg, dotted)
        if len(values) != 3 or (dotted == "crops.std" and min(values) <= 0):
            raise ConfigError(
                f"invalid value for {dotted!r}: {values}; expected 3 values (one per RGB channel)"
                + (", each > 0" if dotted == "crops.std" else "")
            )
    jitter = cfg.crops.color_jitter
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ConfigError(
            f"invalid value for 'crops.color_jitter': {jitter}; expected [brightness, contrast, saturation, hue], "
            "each >= 0, hue <= 0.5"
        )
    if cfg.train.max_iterations is not None and cfg.train.max_iterations < 1:
        raise ConfigError(
            f"invalid value for 'train.max_iterations': {cfg.train.max_iterations}; must be >= 1, or null to run "
            f"the whole schedule (optim.epochs x train.iterations_per_epoch = "
            f"{cfg.optim.epochs * cfg.train.iterations_per_epoch})"
        )
    for dotted in ("crops.global_crops_scale", "crops.local_crops_scale"):
        low = get_by_path(cfg, dotted)[0]
        if low <= 0:
            raise ConfigError(f"invalid value for {dotted!r}: {get_by_path(cfg, dotted)}; the low scale must be > 0")


def get_by_path(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
