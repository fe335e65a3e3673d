"""Where a checkpoint lives and what makes one complete: the names every reader and writer agree on.

``<output_dir>/checkpoints/iter_XXXXXXXX/`` per saved iteration (complete once it has DCP's ``.metadata``
and ``state.json``), ``latest`` naming the newest; :mod:`dinolite.checkpoint.manager` writes them,
:mod:`dinolite.checkpoint.reader` reads them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

CHECKPOINT_DIRNAME = "checkpoints"
LATEST_POINTER = "latest"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
RNG_DIRNAME = "rng"
FORMAT_VERSION = 1
ITER_PREFIX = "iter_"
# What ``latest`` may hold: the name of one checkpoint directory beside it, nothing else (no path, so it
# can never lead outside the folder). Longer files are not read further.
_POINTER_NAME = re.compile(rf"{ITER_PREFIX}\d+")
_POINTER_MAX_BYTES = 64
_warned: set[str] = set()


def iteration_dirname(iteration: int) -> str:
    return f"{ITER_PREFIX}{iteration:08d}"


def is_complete_checkpoint(path: Path) -> bool:
    """A finished checkpoint directory: DCP metadata and the state file are both there."""
    return (path / ".metadata").is_file() and (path / STATE_FILE).is_file()


def complete_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint directories under ``directory`` (a run's ``checkpoints/``), oldest first."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and p.name.startswith(ITER_PREFIX) and p.name[len(ITER_PREFIX) :].isdigit()
    ]
    return sorted((p for p in found if is_complete_checkpoint(p)), key=lambda p: int(p.name[len(ITER_PREFIX) :]))


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_latest_pointer(directory: Path, warn: Callable[[str], None] | None = None) -> str | None:
    """The checkpoint name ``directory/latest`` holds, or None when it is missing or holds anything else.

    The pointer is one rule for every reader (resume, the config diff, export, eval): a plain
    ``iter_<digits>`` name of a directory beside it. Binary garbage, a path (``../other/iter_4``,
    ``/abs/iter_4``) or an over-long file is reported once per process through ``warn`` (default: a
    ``warning:`` line on stderr) naming the file, and ignored: callers then scan for the newest complete
    checkpoint.
    """
    pointer = directory / LATEST_POINTER
    if not pointer.is_file():  # missing, or a folder / FIFO / device: never opened
        return None
    try:
        with open(pointer, "rb") as handle:
            raw = handle.read(_POINTER_MAX_BYTES + 1)
    except OSError as exc:
        problem = f"unreadable ({exc.strerror or exc})"
    else:
        text = raw.decode("ascii", errors="replace").strip()
        if len(raw) <= _POINTER_MAX_BYTES and _POINTER_NAME.fullmatch(text):
            return text
        problem = f"holds {_describe(raw, text)}, not the name of a checkpoint directory beside it (iter_<digits>)"
    message = f"{pointer}: {problem}; ignored: using the newest complete checkpoint found in {directory}"
    if message not in _warned:  # asked several times per start (config diff, resume): said once per process
        _warned.add(message)
        (warn or _print_warning)(message)
    return None


def _describe(raw: bytes, text: str) -> str:
    if len(raw) > _POINTER_MAX_BYTES:
        return f"more than {_POINTER_MAX_BYTES} bytes"
    is_text = text.isprintable() and "\ufffd" not in text  # U+FFFD: a byte that is not ASCII
    return repr(text) if is_text else f"{len(raw)} bytes that are not text"


def latest_checkpoint(directory: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint under ``directory``: the ``latest`` pointer, or a scan when the
    pointer is missing, stale (names an incomplete or deleted checkpoint) or invalid (see
    :func:`read_latest_pointer`)."""
    name = read_latest_pointer(directory, warn)
    if name is not None and is_complete_checkpoint(directory / name):
        return directory / name
    found = complete_checkpoints(directory)
    return found[-1] if found else None
