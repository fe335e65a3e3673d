"""The start-up checks of a training run, without training: what ``dinolite-train --dry-run`` runs.

A dry run must refuse what training refuses at start-up (``train.batch_size_per_gpu=1`` with KoLeo, an
unknown ``train.method``, student weights that do not fit the model), else a config that passes
``--dry-run`` fails only once a cluster job starts. :func:`check_startup` runs the same builders
:func:`dinolite.train.loop.train` runs before its first iteration, with the model built on the ``meta``
device: every shape and config check happens, no memory is allocated and no weights are initialised,
so a ViT-g config is checked on a laptop in seconds. Pretrained weights are read (their shapes are
checked against the model) but not copied. The data is not read: a dry run needs no data set.
"""

from __future__ import annotations

import warnings

import torch

from dinolite.config import Config
from dinolite.monitor.collapse import CollapseMonitor
from dinolite.monitor.watchdog import Watchdog
from dinolite.train.batches import validate_training_config
from dinolite.train.logging import console_logger
from dinolite.train.methods import get_method
from dinolite.train.optim import optimizer_for
from dinolite.train.schedules import build_schedules
from dinolite.train.step import clip_gradients


def check_startup(cfg: Config) -> None:
    """Run training's start-up checks on ``cfg`` (one process) and return; raises what training raises
    (:class:`~dinolite.config.ConfigError` naming the key and value, for the config's own faults)."""
    method = get_method(cfg.train.method)  # an unknown method: did you mean
    validate_training_config(cfg)
    with warnings.catch_warnings():
        # Loading real weights into meta tensors is a no-op, which torch warns about: that is the point.
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        with torch.device("meta"):
            objective = method.build_objective(cfg)
    optimizer_for(objective.student, cfg.optim)  # optim.fixed_lr_modules must name student modules
    # max_norm 0 clips nothing: this only checks that optim.unclipped_modules names student modules
    clip_gradients(objective.trainable_modules(), 0.0, cfg.optim.clip_grad_scope, cfg.optim.unclipped_modules)
    build_schedules(cfg.optim, cfg.train.iterations_per_epoch, cfg.train.batch_size_per_gpu)
    method.build_transform(cfg)
    method.build_collate(cfg)
    monitor = CollapseMonitor.from_config(
        cfg.monitor,
        None,
        method.monitor_student_temp(cfg),
        method.monitor_embeddings,
        method.monitor_means,
    )
    Watchdog.from_config(cfg.monitor, console_logger(), method.watchdog_thresholds, monitor.metric_names)
