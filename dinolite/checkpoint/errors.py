"""What can go wrong with a checkpoint; every message names the directory or file at fault."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model; the message names the path."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No (complete) checkpoint where one was expected."""


class DamagedCheckpointError(CheckpointError, ValueError):
    """A checkpoint's files are unreadable (empty or truncated metadata or shards, a broken state.json or RNG
    file). Resume falls back to the previous intact checkpoint. Also a ``ValueError`` (bad input): the
    command-line entry points print it as one ``error:`` line."""


class ArchitectureMismatchError(CheckpointError, ValueError):
    """The checkpoint holds another architecture than the one this run builds (keys or shapes differ)."""
