"""Training checkpoints below everything else: sharded DCP save/load, resume, and consolidation.

``train`` writes and resumes through :class:`CheckpointManager` (``manager.py``); ``eval`` and
``export`` read a run's weights through :func:`load_consolidated_state_dict`, and the method's evaluated
network and head names through :func:`method_record` (``reader.py``), without importing the trainer.
``layout.py`` holds the names both sides agree on; ``state.py`` the app-state and RNG trees.
"""

from dinolite.checkpoint.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    DamagedCheckpointError,
)
from dinolite.checkpoint.layout import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILE,
    LATEST_POINTER,
    STATE_FILE,
    is_complete_checkpoint,
    iteration_dirname,
)
from dinolite.checkpoint.manager import CheckpointManager
from dinolite.checkpoint.reader import (
    checkpoint_modules,
    load_checkpoint,
    load_consolidated_state_dict,
    method_record,
    read_checkpoint_info,
    resolve_checkpoint_dir,
)
from dinolite.checkpoint.state import capture_rng_state, restore_rng_state

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
