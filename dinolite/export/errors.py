"""What can go wrong reading or writing an export; every message names the file (and key) at fault."""

from __future__ import annotations


class ExportFormatError(ValueError):
    """An exported file that is not what it claims to be (wrong architecture, truncated, foreign)."""


class ExportWriteError(OSError):
    """An export could not be written (full or read-only disk); nothing of it was left behind."""
