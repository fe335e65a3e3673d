"""Fashion-MNIST test helpers: gzip'd IDX files written from arrays, a direct reader of the Debian
package's files (gzip + numpy, independent of dinolite's reader), and the skip without the package."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from dinolite.data.fashion_mnist import DEBIAN_DIR, SPLIT_FILES

HAVE_PACKAGE = all((DEBIAN_DIR / name).is_file() for files in SPLIT_FILES.values() for name in files)
needs_package = pytest.mark.skipif(
    not HAVE_PACKAGE,
    reason=f"Fashion-MNIST is not installed in {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    """The IDX encoding of a uint8 array (big-endian dimensions after a 4-byte magic), not compressed."""
    head = magic if magic is not None else bytes((0, 0, 0x08, array.ndim))
    return head + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """The four ``*-ubyte.gz`` files for ``{split: (images, labels)}`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        images_name, labels_name = SPLIT_FILES[split]
        (folder / images_name).write_bytes(gzip.compress(idx_bytes(images), mtime=0))
        (folder / labels_name).write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    return folder


def synthetic_splits(train: int, val: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
        for split, n in (("train", train), ("val", val))
    }


def read_debian(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The package's images and labels, read directly (offsets 16 and 8 of the standard IDX files)."""
    images_name, labels_name = SPLIT_FILES[split]
    images = np.frombuffer(gzip.decompress((DEBIAN_DIR / images_name).read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((DEBIAN_DIR / labels_name).read_bytes()), np.uint8, offset=8)
    return images.reshape(-1, 28, 28), labels


def real_subset(folder: Path, train: int, val: int) -> Path:
    """The first ``train`` / ``val`` images of the package's files as an IDX set of their own."""
    return write_idx_set(
        folder, {split: tuple(a[:n] for a in read_debian(split)) for split, n in (("train", train), ("val", val))}
    )
