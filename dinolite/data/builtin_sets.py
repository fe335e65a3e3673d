"""The development data sets dinolite builds itself: ``data.source=[digits]`` or ``[fashion_mnist]``.

Each is written once under a run's ``<output_dir>/data`` (digits at its root, as it always was; the
others in a sub-folder of their name) and brings its labelled evaluation split, so the kNN report,
the online evaluation and the lab need no ``evaluation.knn_train`` / ``knn_val`` for it. Every
preparer returns the same locations: ``{"train": [shard pattern], "val": [shard pattern],
"train_folder": str, "val_folder": str}`` (the folders are the evaluation sources).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

from dinolite.data.digits import prepare_digits
from dinolite.data.fashion_mnist import prepare_fashion_mnist


class BuiltinSet(NamedTuple):
    prepare: Callable[[Path], dict]
    folder: str  # under the data root; "" is the root itself


BUILTIN_SETS: dict[str, BuiltinSet] = {
    "digits": BuiltinSet(prepare_digits, ""),
    "fashion_mnist": BuiltinSet(prepare_fashion_mnist, "fashion_mnist"),
}


def builtin_set(source: Sequence[str]) -> Optional[str]:
    """The built-in set ``source`` names (``[digits]`` -> ``"digits"``), None for shards or folders."""
    source = list(source)
    return source[0] if len(source) == 1 and source[0] in BUILTIN_SETS else None


def misspelt_builtin_set(source: Sequence[str]) -> Optional[str]:
    """The built-in set a one-entry ``source`` that is no file most likely meant (``[fashion-mnist]`` ->
    ``"fashion_mnist"``), None otherwise."""
    source = list(source)
    if len(source) != 1 or source[0] in BUILTIN_SETS or os.path.exists(source[0]):
        return None
    near = difflib.get_close_matches(source[0].lower().replace("-", "_"), list(BUILTIN_SETS), n=1, cutoff=0.75)
    return near[0] if near else None


def prepare_builtin_set(name: str, data_root: str | Path) -> dict:
    """Write the built-in set ``name`` under ``data_root`` (idempotent) and return its locations."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown built-in data set {name!r}; expected one of {sorted(BUILTIN_SETS)}")
    entry = BUILTIN_SETS[name]
    return entry.prepare(Path(data_root) / entry.folder)


def builtin_sets_text() -> str:
    """``[digits] or [fashion_mnist]``, for messages."""
    return " or ".join(f"[{name}]" for name in BUILTIN_SETS)


def write_builtin_set(name: str, out: str | Path, shard_size: Optional[int] = None) -> dict:
    """``dinolite-shards --dataset NAME OUT``: the set ``name`` at the root of ``out`` (idempotent),
    ``shard_size`` samples per shard (None: the set's own default); returns its locations."""
    if name not in BUILTIN_SETS:
        raise ValueError(f"unknown built-in data set {name!r}; expected one of {sorted(BUILTIN_SETS)}")
    prepare = BUILTIN_SETS[name].prepare
    return prepare(Path(out)) if shard_size is None else prepare(Path(out), shard_size=shard_size)
