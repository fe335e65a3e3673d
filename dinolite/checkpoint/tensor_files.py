"""Tensor files (``.pth``/``.pt``/``.bin``, RNG files): read without running code and without
allocating more than the file holds; written so that a full disk reports its errno.

- :func:`load_tensor_file`: ``torch.load(weights_only=True)`` (no code runs), then
  :func:`check_tensor_storage` on every tensor it returned.
- :func:`check_tensor_storage`: a pickle may describe a tensor as a *view* of its storage with any
  shape and strides; ``expand`` (stride 0) lets 4 stored bytes pose as a 3072x1024 matrix, and many
  views can share one storage. Copying such tensors into a model allocates the shapes, not the file:
  a 33 KB ``.pth`` would build a 300M-parameter ViT-L. Every tensor must be a plain strided tensor
  whose elements its storage really holds, and the tensors together may not claim more bytes than
  their distinct storages hold (torch itself checks that each storage's bytes are in the file).
- :func:`save_tensor_file`: ``torch.save`` through a Python file object. Given a path, torch's C++ zip
  writer reports a failed write as ``unexpected pos 704 vs 598`` with no errno, so a full disk cannot
  be told from a bug; through a Python file the ``OSError`` (ENOSPC) itself propagates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class TensorBudgetError(ValueError):
    """A tensor file whose tensors claim more elements than the file stores; the message names file and key."""


def _walk(obj: Any, where: str) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict/list/tuple, with a dotted name for messages."""
    if isinstance(obj, torch.Tensor):
        return [(where, obj)]
    if isinstance(obj, Mapping):
        return [item for key, value in obj.items() for item in _walk(value, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, (list, tuple)):
        return [item for i, value in enumerate(obj) for item in _walk(value, f"{where}[{i}]")]
    return []


def check_tensor_storage(obj: Any, origin: str) -> None:
    """Refuse tensors that claim more bytes than their storage holds (expanded, overlapping or shared
    views), and tensors that are not plain strided CPU tensors (sparse, quantized, meta: their shape
    is not backed by bytes either). ``obj``: a tensor or a nested dict/list of them."""
    claimed = 0
    storages: dict[int, int] = {}
    for key, tensor in _walk(obj, ""):
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
            raise TensorBudgetError(
                f"{origin}: tensor {key!r} is a {tensor.layout} {tensor.device.type} tensor"
                f"{' (quantized)' if tensor.is_quantized else ''}; only plain strided CPU tensors are read"
            )
        need = tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        held = storage.nbytes() - tensor.storage_offset() * tensor.element_size()
        if need > held:
            raise TensorBudgetError(
                f"{origin}: tensor {key!r} claims shape {tuple(tensor.shape)} ({need} bytes) but its storage in the "
                f"file holds {max(held, 0)} bytes (an expanded or overlapping view): refused before anything is built"
            )
        claimed += need
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    held_total = sum(storages.values())
    if claimed > held_total:
        raise TensorBudgetError(
            f"{origin}: its tensors claim {claimed} bytes but share storages holding {held_total} bytes "
            "(one stored payload viewed many times): refused before anything is built"
        )


def load_tensor_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every tensor checked by :func:`check_tensor_storage`.

    Raises :class:`TensorBudgetError` for inflated tensors; torch's own errors (a foreign pickle, a
    truncated zip) propagate for the caller to name."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    check_tensor_storage(obj, str(path))
    return obj


def save_tensor_file(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a Python file, so that a failed write raises its ``OSError``."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)
