"""Checks that make checkpoint failures name their cause: damaged files, architecture changes, full disks.

- :func:`check_shard_files`: every ``*.distcp`` file the metadata lists exists and is long enough for the
  byte ranges it records (a truncated shard otherwise surfaces from torch's zip reader as "failed finding
  central directory", naming no file). A stat per file: cheap. Same-size corruption is not detected here.
- :func:`check_architecture`: the model entries saved vs. the ones this run loads (missing, unexpected,
  other shapes) -> :class:`ArchitectureMismatchError` telling the user to start a new output directory.
- :func:`check_metadata_budget`: what consolidation would allocate from ``.metadata`` (every entry at its
  global size) against the shard bytes the metadata itself records for it, before anything is allocated:
  a 1 KB ``.metadata`` claiming a 2.65 GB tensor is refused (the shard files are checked to hold those
  bytes by :func:`check_shard_files`).
- :func:`describe_save_failure`: ``no space left on <dir>`` when the failure is ENOSPC or EDQUOT (an
  ``OSError`` anywhere in the chain, including DCP's per-rank failures, or the message of a writer that
  drops the errno) or the disk is full when the failure is examined (callers do that *before* removing
  what the failed write left); otherwise the original error with the directory.
"""

from __future__ import annotations

import errno
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from dinolite.checkpoint.errors import ArchitectureMismatchError, DamagedCheckpointError

FULL_DISK_BYTES = 1 << 20  # less than this free after a failed write: report it as a full disk
# errnos that mean "the file system has no room for this" (quota is per user, same remedy)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how writers that drop the errno spell it: Python/libc strerror, Rust's io::Error (safetensors)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122", "StorageFull")


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


def _architecture_problems(metadata: Metadata, shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[str]:
    saved = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
    missing = sorted(k for k in shapes if k not in saved)
    unexpected = sorted(k for k in saved if k.startswith(prefix) and k not in shapes)
    reshaped = sorted(
        f"{k} {tuple(saved[k].size)} -> {tuple(v)}"
        for k, v in shapes.items()
        if k in saved and tuple(saved[k].size) != tuple(v)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} entries this run needs are not in it: {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} model entries in it are not in this run's model: {_shown(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} entries have other shapes (saved -> now): {_shown(reshaped)}")
    return problems


def check_architecture(path: Path, metadata: Metadata, targets: Mapping[str, Any], prefix: str = "model.") -> None:
    """``targets``: this run's flat ``{key: tensor}`` of everything it loads (global shapes)."""
    problems = _architecture_problems(metadata, {k: tuple(v.shape) for k, v in targets.items()}, prefix)
    if problems:
        raise ArchitectureMismatchError(
            f"{path}: this checkpoint holds another architecture than the config builds: {'; '.join(problems)}. "
            "A run's architecture cannot change on resume: start it in a new output directory (train.output_dir "
            "or --output-dir), or initialise from an export with student.pretrained_weights"
        )


def check_saved_shapes(path: Path, metadata: Metadata, shapes: Mapping[str, tuple[int, ...]], prefix: str) -> None:
    """Before consolidation allocates anything: the entries under ``prefix`` are exactly ``shapes`` (the
    architecture the checkpoint's own ``config.yaml`` builds), else the folder's metadata and config disagree."""
    problems = _architecture_problems(metadata, {prefix + k: tuple(v) for k, v in shapes.items()}, prefix)
    if problems:
        raise ArchitectureMismatchError(
            f"{path / '.metadata'}: the tensors under {prefix!r} do not match the architecture of "
            f"{path / 'config.yaml'}: {'; '.join(problems)} (damaged or tampered checkpoint); nothing was allocated"
        )


def _is_enospc(exc: BaseException | None, seen: set[int] | None = None) -> bool:
    seen = set() if seen is None else seen
    if exc is None or id(exc) in seen:
        return False
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    if any(text in str(exc) for text in DISK_FULL_TEXTS):
        return True
    nested = [getattr(exc, "exception", None), exc.__cause__, exc.__context__]
    failures = getattr(exc, "failures", None)  # DCP's CheckpointException: {rank: wrapped exception}
    if isinstance(failures, Mapping):
        nested.extend(getattr(f, "exception", f) for f in failures.values())
    return any(_is_enospc(e, seen) for e in nested if isinstance(e, BaseException))


def free_bytes(directory: Path) -> int | None:
    """Free bytes on the file system of ``directory`` (or of its nearest existing parent); None if unknown."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException | None, directory: Path) -> tuple[bool, int | None]:
    """``(full, free bytes)``: the failure ``exc`` is ENOSPC/EDQUOT, or ``directory``'s disk is full now.

    Call it before removing what the failed write left: the free space then is what the writer saw."""
    free = free_bytes(directory)
    return _is_enospc(exc) or (free is not None and free < FULL_DISK_BYTES), free


def describe_save_failure(exc: BaseException | None, directory: Path) -> str:
    """The message for a failed checkpoint save (``exc`` None: it failed on another rank)."""
    full, free = is_disk_full(exc, directory)
    if full:
        left = f"; {free} bytes free" if free is not None else ""
        return f"no space left on {directory}{left}: the checkpoint was not written (the previous ones are intact)"
    if exc is None:
        return "failed on another rank"
    return f"could not write a checkpoint in {directory}: {type(exc).__name__}: {exc}"


def check_metadata_budget(path: Path, metadata: Metadata, keys: list[str]) -> None:
    """Refuse entries of ``keys`` whose global size is not backed by shard bytes the metadata records.

    Each entry's chunks must tile its size (element counts add up, each chunk inside the tensor), and
    each chunk's recorded shard length must hold its elements: DCP stores every chunk uncompressed, so
    a shorter record means the sizes were inflated. Nothing is allocated here.
    """
    lengths: dict[tuple[str, tuple[int, ...]], int] = {}
    for index, info in metadata.storage_data.items():
        if getattr(info, "transform_descriptors", None):
            raise DamagedCheckpointError(
                f"{path / '.metadata'}: {index.fqn!r} is stored through stream transforms "
                f"({info.transform_descriptors}); dinolite writes and reads plain shards only"
            )
        where = (index.fqn, tuple(index.offset or ()))
        lengths[where] = lengths.get(where, 0) + int(info.length)
    for key in keys:
        item = metadata.state_dict_metadata[key]
        size = _checked_size(path, key, "size", item.size)
        element = item.properties.dtype.itemsize
        covered = 0
        for chunk in item.chunks:
            offsets = _checked_size(path, key, "chunk offsets", chunk.offsets)
            sizes = _checked_size(path, key, "chunk sizes", chunk.sizes)
            if (
                len(offsets) != len(size)
                or len(sizes) != len(size)
                or any(o + s > n for o, s, n in zip(offsets, sizes, size))
            ):
                raise DamagedCheckpointError(
                    f"{path / '.metadata'}: {key!r} has a chunk at {offsets} of size {sizes} outside its size {size}"
                )
            needed = math.prod(sizes) * element
            recorded = lengths.get((key, offsets), 0)
            if needed > recorded:
                raise DamagedCheckpointError(
                    f"{path / '.metadata'}: {key!r} claims a chunk of {sizes} ({needed} bytes) but records "
                    f"{recorded} shard bytes for it: the sizes in the metadata are inflated; nothing was allocated"
                )
            covered += math.prod(sizes)
        if covered != math.prod(size):
            raise DamagedCheckpointError(
                f"{path / '.metadata'}: {key!r} of size {size} has chunks covering {covered} of "
                f"{math.prod(size)} elements"
            )


def _checked_size(path: Path, key: str, what: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise DamagedCheckpointError(f"{path / '.metadata'}: {key!r} has {what} {value!r}, not non-negative integers")
    return tuple(int(v) for v in value)
