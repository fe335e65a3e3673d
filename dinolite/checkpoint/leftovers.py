"""What a killed save or prune leaves in ``checkpoints/``, and removing it without touching anything else.

A save writes ``iter_N.tmp/`` and renames it; re-saving an iteration moves the old one to ``iter_N.old/``;
a prune renames ``iter_N/`` to ``iter_N.pruned/`` before deleting it; ``latest`` is replaced through
``.latest.tmp<PID>``. A SIGKILL between those steps leaves the temporary name behind, and nothing ever
reads it again. :func:`remove_leftovers` runs on rank 0 at the start of every save (while the run lock
keeps every other run out of the folder) and removes only these names:

- ``iter_N.tmp/`` and ``iter_N.pruned/``: never a complete checkpoint under its final name;
- ``iter_N.old/`` when ``iter_N/`` is complete (a re-save killed after its rename); when ``iter_N/`` is
  missing the ``.old`` copy is the only one and is renamed back instead;
- ``.latest.tmp<PID>`` when no process ``PID`` is alive on this host (a live one may be writing it);
- ``iter_N/`` without ``.metadata`` or ``state.json`` and older than the newest complete checkpoint, when
  pruning is on (``keep_last > 0``): what a prune killed inside ``rmtree`` left before prunes renamed
  first (a save never gives an incomplete directory its final name, so nothing else produces one).

The checkpoint ``latest`` names and every complete ``iter_N/`` are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from dinolite.checkpoint.layout import ITER_PREFIX, LATEST_POINTER, complete_checkpoints, is_complete_checkpoint

PRUNED_SUFFIX = ".pruned"
_TEMPORARY = re.compile(rf"{ITER_PREFIX}(\d+)\.(tmp|old|pruned)")
_FINAL = re.compile(rf"{ITER_PREFIX}(\d+)")
_POINTER_TEMP = re.compile(rf"\.{LATEST_POINTER}\.tmp(\d+)")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _restore_or_remove_old(path: Path, final: Path, removed: list[Path]) -> None:
    if is_complete_checkpoint(final):
        shutil.rmtree(path)
        removed.append(path)
    elif not final.exists() and is_complete_checkpoint(path):
        os.replace(path, final)


def remove_leftovers(directory: Path, keep_last: int, warn: Callable[[str], None] = print) -> list[Path]:
    """Remove what killed saves and prunes left in ``directory`` (a run's ``checkpoints/``); returns it.

    Never raises for a leftover it cannot remove (a save must not fail over its predecessor's debris)."""
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    complete = complete_checkpoints(directory)
    newest = int(complete[-1].name[len(ITER_PREFIX) :]) if complete else None
    for path in sorted(directory.iterdir()):
        with contextlib.suppress(OSError):
            _remove_if_leftover(path, directory, keep_last, newest, removed)
    if removed:
        warn(f"removed what interrupted saves or prunes left in {directory}: {', '.join(p.name for p in removed)}")
    return removed


def _remove_if_leftover(path: Path, directory: Path, keep_last: int, newest: int | None, removed: list[Path]) -> None:
    temporary, final, pointer_temp = (
        _TEMPORARY.fullmatch(path.name),
        _FINAL.fullmatch(path.name),
        _POINTER_TEMP.fullmatch(path.name),
    )
    if temporary and path.is_dir() and not path.is_symlink():
        if temporary.group(2) == "old":
            _restore_or_remove_old(path, directory / f"{ITER_PREFIX}{temporary.group(1)}", removed)
        else:
            shutil.rmtree(path)
            removed.append(path)
    elif pointer_temp and path.is_file() and not _process_alive(int(pointer_temp.group(1))):
        path.unlink()
        removed.append(path)
    elif (
        final
        and keep_last > 0
        and newest is not None
        and int(final.group(1)) < newest
        and path.is_dir()
        and not path.is_symlink()
        and not is_complete_checkpoint(path)
    ):
        shutil.rmtree(path)
        removed.append(path)
