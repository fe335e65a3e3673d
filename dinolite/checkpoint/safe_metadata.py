"""Read DCP's ``.metadata`` without running code: a restricted unpickler and a reader that uses it.

``torch.distributed.checkpoint.FileSystemReader.read_metadata`` calls plain ``pickle.load`` on the
checkpoint's ``.metadata`` file, so a folder someone hands you can execute anything the moment it is
loaded. :class:`SafeFileSystemReader` replaces that one call: its unpickler resolves only the globals a
DCP metadata file of a tensors-only checkpoint needs, refuses every other one *before* it is imported or
called, and then checks the shape of what it built (a ``Metadata`` whose entries are all tensors, whose
shard files are plain ``*.distcp`` names inside the folder).

The admitted globals are exactly what torch 2.6 - 2.14 write (read off the pickles ``dcp.save`` emits
and the dataclasses in ``torch/distributed/checkpoint/metadata.py``):

- ``torch.distributed.checkpoint.metadata``: ``Metadata``, ``TensorStorageMetadata``, ``TensorProperties``,
  ``ChunkStorageMetadata``, ``MetadataIndex``, ``StorageMeta``, ``_MEM_FORMAT_ENCODING`` (an Enum);
- ``torch.distributed.checkpoint.filesystem._StorageInfo`` (file name, offset, length of each shard);
- ``torch.Size``; ``torch.<dtype>`` (``torch.float32``, ``torch.bfloat16``, ...: only names whose value is a
  ``torch.dtype``, ``torch.layout`` or ``torch.memory_format``); ``torch.serialization._get_layout`` (how a
  layout pickles: a name looked up in a table of layouts);
- ``pathlib.PosixPath`` / ``PurePosixPath`` / ``WindowsPath`` / ``PureWindowsPath`` (the ``checkpoint_id`` DCP
  records; ``pathlib._local`` is their module on Python 3.13+).

Calling any of these with attacker-chosen arguments builds a value and does nothing else. Deliberately
*not* admitted: ``BytesStorageMetadata`` (DCP reads byte entries with ``torch.load(weights_only=False)``;
dinolite stores tensors only, so such an entry can only come from a foreign or tampered folder). The shard
files themselves are read by DCP with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)

METADATA_FILE = ".metadata"
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        (_DCP_METADATA, name)
        for name in (
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "ChunkStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ]
    + [
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
    ]
    + [
        (module, name)
        for module in ("pathlib", "pathlib._local")
        for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
    ]
)
_TORCH_VALUE_TYPES = (torch.dtype, torch.layout, torch.memory_format)


class CheckpointMetadataError(ValueError):
    """A ``.metadata`` file that cannot be read (empty, truncated, not DCP's); the message names the file."""


class UnsafeMetadataError(CheckpointMetadataError):
    """A ``.metadata`` pickle that asks for a global outside :data:`ALLOWED_GLOBALS`; nothing was run."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUE_TYPES):
            return getattr(torch, name)
        raise UnsafeMetadataError(
            f"{self._path}: refused to load global {module}.{name} (a DCP metadata file of a dinolite checkpoint "
            "never needs it): this checkpoint folder is foreign or has been tampered with; nothing in it was run"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeMetadataError(
            f"{self._path}: refused a persistent id in the metadata pickle; nothing in it was run"
        )


def read_dcp_metadata(path: str | Path) -> Metadata:
    """Unpickle a DCP ``.metadata`` file with the restricted unpickler and check what it describes."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            metadata = _RestrictedUnpickler(handle, path).load()
    except CheckpointMetadataError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointMetadataError(f"{path}: missing (not a complete DCP checkpoint)") from exc
    except Exception as exc:  # EOFError "Ran out of input", UnpicklingError, TypeError from a mangled stream
        raise CheckpointMetadataError(
            f"{path}: cannot read the checkpoint metadata (empty, truncated or not DCP's): {type(exc).__name__}: {exc}"
        ) from exc
    _check_metadata(metadata, path)
    return metadata


def _check_metadata(metadata: Any, path: Path) -> None:
    if not isinstance(metadata, Metadata):
        raise CheckpointMetadataError(f"{path}: holds a {type(metadata).__name__}, not DCP Metadata")
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise CheckpointMetadataError(f"{path}: state_dict_metadata is a {type(entries).__name__}, not a dict")
    for key, item in entries.items():
        if not isinstance(item, TensorStorageMetadata):
            raise CheckpointMetadataError(f"{path}: entry {key!r} is a {type(item).__name__}; only tensors are loaded")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise CheckpointMetadataError(f"{path}: storage_data is a {type(storage).__name__}, not a dict")
    for index, info in storage.items():
        name = getattr(info, "relative_path", None)
        # Shards are files beside .metadata; a path elsewhere would make DCP read files outside the folder.
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointMetadataError(f"{path}: shard of {getattr(index, 'fqn', index)!r} names file {name!r}")


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose ``read_metadata`` goes through :func:`read_dcp_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}"
        metadata = read_dcp_metadata(Path(self.path) / name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
