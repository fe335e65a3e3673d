"""A run folder with real checkpoints of a tiny DINOv2 objective, made without training (a second).

What eval and export read: ``checkpoints/iter_*/`` (DCP shards, ``state.json`` with the method record,
``config.yaml``, RNG files) and ``latest``. Hostile-input tests copy it and plant one fault each.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dinolite.checkpoint import CheckpointManager
from dinolite.config import Config
from dinolite.train.methods import get_method
from tests.train.test_loop import tiny_config


def tiny_objective(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_method("dinov2").build_objective(cfg)


def tiny_manager(output_dir: Path, keep_last: int = 3) -> tuple[CheckpointManager, dict]:
    """The manager a run in ``output_dir`` uses, and its app_state (objective only)."""
    cfg = tiny_config(output_dir)  # the training loop tests' tiny DINOv2 (width 16, one block, 16 px crops)
    manager = CheckpointManager(output_dir, keep_last=keep_last, config=cfg, method=get_method("dinov2").record(cfg))
    return manager, {"model": tiny_objective(cfg)}


def make_tiny_run(output_dir: Path, iterations: tuple[int, ...] = (2, 4)) -> Path:
    """Checkpoints ``iter_<i>`` for each of ``iterations`` (``latest`` names the last) in ``output_dir``."""
    manager, app_state = tiny_manager(output_dir)
    for iteration in iterations:
        manager.save(iteration, app_state)
    return output_dir
