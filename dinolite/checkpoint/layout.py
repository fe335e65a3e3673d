"""Where a checkpoint lives and what makes one complete: the names every reader and writer agree on.

``<output_dir>/checkpoints/iter_XXXXXXXX/`` per saved iteration (complete once it has DCP's ``.metadata``
and ``state.json``), ``latest`` naming the newest; :mod:`dinolite.checkpoint.manager` writes them,
:mod:`dinolite.checkpoint.reader` reads them.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIRNAME = "checkpoints"
LATEST_POINTER = "latest"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
RNG_DIRNAME = "rng"
FORMAT_VERSION = 1
ITER_PREFIX = "iter_"


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


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under ``directory``: the ``latest`` pointer, or a scan when the
    pointer is missing or stale."""
    pointer = directory / LATEST_POINTER
    if pointer.is_file():
        candidate = directory / pointer.read_text().strip()
        if is_complete_checkpoint(candidate):
            return candidate
    found = complete_checkpoints(directory)
    return found[-1] if found else None
