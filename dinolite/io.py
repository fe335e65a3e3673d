"""Atomic file writes: write to a hidden temporary name beside the target, then rename.

A reader never sees a half-written file, and a crash leaves the previous version in place (configs,
checkpoint pointers, exports, reports, feature caches). Used across the package; depends on nothing.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    """``0o666 & ~umask``, read once by creating a probe file (setting the umask to read it would
    briefly change it for every thread of the process)."""
    with tempfile.TemporaryDirectory() as directory:
        probe = os.path.join(directory, "probe")
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o666))
        return os.stat(probe).st_mode & 0o777


def write_atomic(path: str | Path, write: Callable[[Path], None], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``; returns ``path``.

    The temporary name keeps ``path``'s suffix (writers such as matplotlib pick the format from it).
    With ``fsync`` the data reaches the disk before the rename (pointers that a resume relies on).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        # Some writers create 0600 files; outputs are meant to be shared like any other file.
        os.chmod(tmp, _default_file_mode())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, fsync: bool = False) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text), fsync=fsync)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
