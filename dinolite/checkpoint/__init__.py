"""Training checkpoints below everything else: sharded DCP save/load, resume, and consolidation.

``train`` writes and resumes through :class:`CheckpointManager`; ``eval`` and ``export`` read a run's
weights through :func:`load_consolidated_state_dict`, and the method's evaluated network and head
names through :func:`method_record`, without importing the trainer.
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
    checkpoint_modules,
    is_complete_checkpoint,
    iteration_dirname,
    load_checkpoint,
    load_consolidated_state_dict,
    method_record,
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
    "checkpoint_modules",
    "is_complete_checkpoint",
    "iteration_dirname",
    "load_checkpoint",
    "load_consolidated_state_dict",
    "method_record",
    "read_checkpoint_info",
    "resolve_checkpoint_dir",
    "restore_rng_state",
]
