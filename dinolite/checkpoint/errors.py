"""What can go wrong with a checkpoint; every message names the directory or file at fault."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model; the message names the path."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (complete) checkpoint where one was expected."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's files are unreadable (empty or truncated metadata or shards, a broken state.json or RNG
    file). Resume falls back to the previous intact checkpoint."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint holds another architecture than the one this run builds (keys or shapes differ)."""
