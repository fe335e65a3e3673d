"""The data package's error for unusable sources (kept apart so every module of the package can raise it)."""

from __future__ import annotations


class SourceError(ValueError):
    """A data source that cannot be used; the message names the pattern, file or folder at fault."""

    def __str__(self) -> str:
        text = super().__str__()
        # A DataLoader re-raises a worker's exception with the worker's whole traceback as its message;
        # its last line holds ours, which is what a user (and the one-line ``error:`` output) needs.
        if text.startswith("Caught ") and "Original Traceback" in text:
            marker = f"{type(self).__name__}: "
            last = text.rstrip().splitlines()[-1]
            if marker in last:
                return last.split(marker, 1)[1] + " (raised in a DataLoader worker)"
        return text
