"""Checks that make checkpoint failures name their cause: damaged files, architecture changes, full disks.

- :func:`check_shard_files`: every ``*.distcp`` file the metadata lists exists and is long enough for the
  byte ranges it records (a truncated shard otherwise surfaces from torch's zip reader as "failed finding
  central directory", naming no file). A stat per file: cheap. Same-size corruption is not detected here.
- :func:`check_architecture`: the model entries saved vs. the ones this run loads (missing, unexpected,
  other shapes) -> :class:`ArchitectureMismatchError` telling the user to start a new output directory.
- :func:`describe_save_failure`: ``no space left on <dir>`` when the failure is ENOSPC (an ``OSError``
  anywhere in the chain, including DCP's per-rank failures) or the disk is full after it; otherwise the
  original error with the directory.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from dinolite.checkpoint.errors import ArchitectureMismatchError, DamagedCheckpointError

FULL_DISK_BYTES = 1 << 20  # less than this free after a failed write: report it as a full disk


def check_shard_files(path: Path, metadata: Metadata) -> None:
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        file = path / name
        try:
            actual = file.stat().st_size
        except FileNotFoundError:
            raise DamagedCheckpointError(f"{file}: missing (listed in {path / '.metadata'})") from None
        if actual < size:
            raise DamagedCheckpointError(f"{file}: truncated ({actual} bytes; the checkpoint metadata needs {size})")


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def check_architecture(path: Path, metadata: Metadata, targets: Mapping[str, Any], prefix: str = "model.") -> None:
    """``targets``: this run's flat ``{key: tensor}`` of everything it loads (global shapes)."""
    saved = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    missing = sorted(k for k in targets if k not in saved)
    unexpected = sorted(k for k in saved if k.startswith(prefix) and k not in targets)
    reshaped = sorted(
        f"{k} {tuple(saved[k].size)} -> {tuple(v.shape)}"
        for k, v in targets.items()
        if k in saved and tuple(saved[k].size) != tuple(v.shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} entries this run needs are not in it: {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} model entries in it are not in this run's model: {_shown(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} entries have other shapes (saved -> now): {_shown(reshaped)}")
    if problems:
        raise ArchitectureMismatchError(
            f"{path}: this checkpoint holds another architecture than the config builds: {'; '.join(problems)}. "
            "A run's architecture cannot change on resume: start it in a new output directory (train.output_dir "
            "or --output-dir), or initialise from an export with student.pretrained_weights"
        )


def _is_enospc(exc: BaseException | None, seen: set[int] | None = None) -> bool:
    seen = set() if seen is None else seen
    if exc is None or id(exc) in seen:
        return False
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(exc):
        return True
    nested = [getattr(exc, "exception", None), exc.__cause__, exc.__context__]
    failures = getattr(exc, "failures", None)  # DCP's CheckpointException: {rank: wrapped exception}
    if isinstance(failures, Mapping):
        nested.extend(getattr(f, "exception", f) for f in failures.values())
    return any(_is_enospc(e, seen) for e in nested if isinstance(e, BaseException))


def describe_save_failure(exc: BaseException, directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
    except OSError:
        free = None
    if _is_enospc(exc) or (free is not None and free < FULL_DISK_BYTES):
        left = f"; {free} bytes free" if free is not None else ""
        return f"no space left on {directory}{left}: the checkpoint was not written (the previous ones are intact)"
    return f"could not write a checkpoint in {directory}: {type(exc).__name__}: {exc}"
