"""Write an export all or nothing: into a hidden folder beside the output, moved into place when complete.

An export is several files (weights, record, heads; a hub folder's weights and configs). Each writer
already renames every file into place when it is complete, but a full disk between two files would leave
half an export (weights without their record, an empty ``hf/`` folder). :func:`staged_output` gives the
writers a path inside ``.<name>.export-tmp<PID>/`` on the same file system; only once every file is
written are they renamed to their final names (renames need no space). On any failure the hidden folder
and every directory the export created are removed, files already at the final names are untouched,
and an ``OSError`` becomes one :class:`~dinolite.export.errors.ExportWriteError` that names the folder:
``no space left on <dir>`` for ENOSPC / EDQUOT (or a disk found full right after the failure, before
the partial files are removed), ``<dir> is read-only`` for EROFS / EACCES / EPERM.

Not guaranteed: a crash (SIGKILL, power loss) during the final renames can leave some files of the
new export next to some of the old one (with ``--force``); a hidden ``.<name>.export-tmp<PID>/`` folder
left by a killed export is not removed automatically.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from dinolite.checkpoint.integrity import is_disk_full
from dinolite.export.errors import ExportWriteError

_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _missing_parents(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    return missing[::-1]


def _write_failure(exc: BaseException, directory: Path) -> str | None:
    """The one-line message for a failed write, or None for an error that is not one (a bug, bad input)."""
    if not isinstance(exc, (OSError, RuntimeError, SafetensorError)):  # RuntimeError: torch's / onnx's writers
        return None
    full, free = is_disk_full(exc, directory)
    if full:
        left = f" ({free} bytes free)" if free is not None else ""
        return f"no space left on {directory}{left}: the export was not written and nothing of it was left behind"
    if isinstance(exc, SafetensorError):  # its writer's failures are I/O (it serialises our own tensors)
        return f"could not write the export in {directory}: {exc}; nothing of it was left behind"
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _READ_ONLY_ERRNOS:
        return (
            f"{directory} is read-only ({exc.strerror}): the export was not written and nothing of it was left behind"
        )
    return f"could not write the export in {directory}: {exc}; nothing of it was left behind"


def _move_into_place(stage: Path, parent: Path) -> None:
    """Rename every staged file to its final place (folders: into the existing one, file by file, so a
    user's other files there stay)."""
    for entry in sorted(stage.iterdir()):
        target = parent / entry.name
        if entry.is_dir():
            target.mkdir(exist_ok=True)
            for item in sorted(entry.iterdir()):
                os.replace(item, target / item.name)
        else:
            os.replace(entry, target)


@contextlib.contextmanager
def staged_output(output: str | Path) -> Iterator[Path]:
    """Yield where to write ``output`` (same name, in a hidden folder beside it); on success move what was
    written there into place, on failure remove it and raise :class:`ExportWriteError` for an ``OSError``
    (or a write error that carries one, such as a full disk reported by safetensors)."""
    output = Path(output)
    parent = output.parent
    created = _missing_parents(parent)
    stage = parent / f".{output.name}.export-tmp{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        yield stage / output.name
        _move_into_place(stage, parent)
    except BaseException as exc:
        message = _write_failure(exc, parent)  # judged before the partial files go (the free space then)
        _remove(stage, created)
        if message is None:
            raise
        raise ExportWriteError(message) from exc
    _remove(stage, [])


def _remove(stage: Path, created: list[Path]) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    for directory in reversed(created):  # innermost first; only if still empty
        with contextlib.suppress(OSError):
            directory.rmdir()
