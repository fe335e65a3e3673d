"""Training checkpoints below everything else: sharded DCP save/load, resume, and consolidation.

``train`` writes and resumes through :class:`CheckpointManager`; ``eval`` and ``export`` read a run's
weights through :func:`load_consolidated_state_dict` without importing the trainer.
"""

from dinolite.checkpoint.errors import ArchitectureMismatchError, DamagedCheckpointError
from dinolite.checkpoint.manager import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILE,
    LATEST_POINTER,
    STATE_FILE,
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    capture_rng_state,
    is_complete_checkpoint,
    iteration_dirname,
    load_checkpoint,
    load_consolidated_state_dict,
    read_checkpoint_info,
    resolve_checkpoint_dir,
    restore_rng_state,
)

__all__ = [
    "ArchitectureMismatchError",
    "DamagedCheckpointError",
    "CHECKPOINT_DIRNAME",
    "CONFIG_FILE",
    "LATEST_POINTER",
    "STATE_FILE",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "capture_rng_state",
    "is_complete_checkpoint",
    "iteration_dirname",
    "load_checkpoint",
    "load_consolidated_state_dict",
    "read_checkpoint_info",
    "resolve_checkpoint_dir",
    "restore_rng_state",
]
