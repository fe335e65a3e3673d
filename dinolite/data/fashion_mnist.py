"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017: 70,000 grey 28x28 photographs of clothing, 10 classes) as
shards: the second development data set, beside scikit-learn's digits.

Read from the four IDX files (gzip) of Debian's ``dataset-fashion-mnist`` package, in
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``), or from the folder
``DINOLITE_FASHION_MNIST_DIR`` names when set (the same four ``*-ubyte.gz`` files, as Zalando distributes
them). Each file is read within the ``MAX_IDX_BYTES`` budget, compressed and decompressed, and its
header is checked against its length before any image is used.

``prepare_fashion_mnist(root)`` writes the standard split: the 60,000 training images to
``root/train/train-NNNNNN.tar.gz`` and the 10,000 test images to ``root/val/val-NNNNNN.tar.gz``, each
folder one shard set with its ``{prefix}-index.json``; train is also the kNN memory and linear-probe fit
set, val the evaluation set. A sample is ``KEY.png`` (the 28 px grey image as stored: the loader decodes
it to RGB, three equal channels, as it does the digits' grey-as-RGB PNGs) and ``KEY.cls`` (0-9, the
index JSON's ``classes`` names them); ``KEY`` is the image's position in the IDX file. The PNGs are
stored uncompressed and the shard is gzip'd: smaller than compressed PNGs in a plain tar, and faster to
write (figures: benchmarks/RESULTS.md). A marker file written last makes the call idempotent.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from dinolite.data.budget import MAX_IDX_BYTES, InputTooLargeError, read_file_capped
from dinolite.data.shard_writer import ShardWriter, write_shard_index
from dinolite.io import write_json_atomic

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "DINOLITE_FASHION_MNIST_DIR"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
# Label i is CLASSES[i] (the data set's README).
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIDE = 28
# split -> (images file, labels file); the standard test set is the evaluation ("val") split.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHARD_SIZE = 2500  # 24 train shards: enough to spread over the ranks and data workers of a small run
_MARKER = "fashion_mnist.json"
_IDX_UNSIGNED_BYTE = 0x08
_BUDGET_KEY = "dinolite.data.budget.MAX_IDX_BYTES"


class FashionMNISTNotFoundError(FileNotFoundError):
    """The IDX files are not where they were looked for (the Debian package is not installed)."""


class IDXFormatError(ValueError):
    """An IDX file whose bytes do not hold what its header declares."""


def fashion_mnist_dir(directory: Optional[str | Path] = None) -> Path:
    """The folder holding the four IDX files: ``directory``, else ``$DINOLITE_FASHION_MNIST_DIR``, else
    the Debian package's. :class:`FashionMNISTNotFoundError` naming the missing files and the package."""
    if directory is not None:
        found, origin = Path(directory), "the folder given"
    elif os.environ.get(DIR_ENV):
        found, origin = Path(os.environ[DIR_ENV]), f"${DIR_ENV}"
    else:
        found, origin = DEBIAN_DIR, "the Debian package's folder"
    missing = [name for files in SPLIT_FILES.values() for name in files if not (found / name).is_file()]
    if missing:
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST is not installed: {origin} {str(found)!r} lacks {', '.join(missing)}. Install the "
            f"Debian package dataset-fashion-mnist ({INSTALL_HINT}), or set {DIR_ENV} to a folder holding the "
            "four *-ubyte.gz files"
        )
    return found


def _decompress(path: Path, data: bytes, ndim: int) -> tuple[tuple[int, ...], bytes]:
    """(shape, payload) of the gzip'd IDX bytes ``data``, decompressing no more than the header declares."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: the CRC32 and length are checked
    header_bytes = 4 + 4 * ndim
    header = decompressor.decompress(data, header_bytes)
    if len(header) < header_bytes:
        raise IDXFormatError(f"{str(path)!r}: the IDX header is cut short ({len(header)} of {header_bytes} bytes)")
    if header[:4] != bytes((0, 0, _IDX_UNSIGNED_BYTE, ndim)):
        raise IDXFormatError(
            f"{str(path)!r}: IDX magic {header[:4].hex()}, expected 000008{ndim:02x} (unsigned bytes, {ndim} "
            "dimensions): not the file its name says"
        )
    shape = struct.unpack(f">{ndim}I", header[4:])
    size = math.prod(shape)
    if header_bytes + size > MAX_IDX_BYTES:
        raise InputTooLargeError(
            f"{str(path)!r} declares {shape} = {header_bytes + size:,} bytes, above the limit of {MAX_IDX_BYTES:,} "
            f"bytes ({_BUDGET_KEY}); not read"
        )
    payload = decompressor.decompress(decompressor.unconsumed_tail, size + 1)
    if len(payload) != size:
        more = "more than" if len(payload) > size else f"only {len(payload):,} of"
        raise IDXFormatError(f"{str(path)!r} holds {more} the {size:,} bytes its header declares {shape}")
    if not decompressor.eof or decompressor.unused_data:
        raise IDXFormatError(f"{str(path)!r}: the gzip stream is cut short or followed by other data")
    return shape, payload


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of ``ndim`` dimensions in the gzip'd IDX file ``path``, read within
    ``MAX_IDX_BYTES``. :class:`IDXFormatError` names the file when its bytes are not what its header says."""
    path = Path(path)
    data = read_file_capped(path, MAX_IDX_BYTES, _BUDGET_KEY)
    if data[:2] != b"\x1f\x8b":
        raise IDXFormatError(f"{str(path)!r} is not gzip data (it starts with {data[:4]!r}); expected *-ubyte.gz")
    try:
        shape, payload = _decompress(path, data, ndim)
    except zlib.error as exc:
        raise IDXFormatError(f"{str(path)!r}: damaged gzip data ({exc})") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def load_split(split: str, directory: Optional[str | Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) uint8)`` of ``split`` (train | val), checked: 28 x 28
    images, one label in 0-9 per image."""
    if split not in SPLIT_FILES:
        raise ValueError(f"Fashion-MNIST split {split!r}: expected one of {sorted(SPLIT_FILES)}")
    folder = fashion_mnist_dir(directory)
    images_file, labels_file = (folder / name for name in SPLIT_FILES[split])
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise IDXFormatError(f"{str(images_file)!r} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{str(images_file)!r} holds {len(images):,} images but {str(labels_file)!r} {len(labels):,} labels"
        )
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise IDXFormatError(f"{str(labels_file)!r}: label {int(labels.max())} is outside 0-{len(CLASSES) - 1}")
    return images, labels


def encode_png(image: np.ndarray) -> bytes:
    """An (H, W) uint8 array as a grey PNG, uncompressed (the shard's gzip compresses it better)."""
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, "PNG", compress_level=0)
    return out.getvalue()


def write_split(
    images: np.ndarray, labels: np.ndarray, folder: Path, prefix: str, shard_size: int, source: str
) -> dict:
    """``images``/``labels`` as ``folder/{prefix}-NNNNNN.tar.gz`` shards and their index; returns the index.
    Only this writer's own files are removed first (an interrupted earlier attempt), nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob(f"{prefix}-*.tar.gz"), *folder.glob(f".{prefix}-*.tmp")]:
        stale.unlink()
    (folder / f"{prefix}-index.json").unlink(missing_ok=True)
    writer = ShardWriter(folder, prefix, shard_size, compress=True)
    for position, (image, label) in enumerate(zip(images, labels.tolist())):
        writer.write(f"{position:09d}", {"png": encode_png(image), "cls": str(label).encode()})
    writer.close()
    return write_shard_index(writer, source, list(CLASSES), [])


def prepare_fashion_mnist(
    root: str | Path, shard_size: int = SHARD_SIZE, directory: Optional[str | Path] = None
) -> dict[str, list[str] | str]:
    """Write Fashion-MNIST's shards under ``root`` (once) and return their locations, as
    :func:`~dinolite.data.digits.prepare_digits` does: ``{"train": [shard pattern], "val": [shard pattern],
    "train_folder": str, "val_folder": str}``. ``directory``: where the IDX files are
    (:func:`fashion_mnist_dir`)."""
    root = Path(root)
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    result: dict[str, list[str] | str] = {}
    for split in SPLIT_FILES:
        result[split] = [str(root / split / f"{split}-*.tar.gz")]
        result[f"{split}_folder"] = str(root / split)
    if (root / _MARKER).is_file():
        return result
    source = fashion_mnist_dir(directory)
    counts = {}
    for split in SPLIT_FILES:
        images, labels = load_split(split, source)
        index = write_split(images, labels, root / split, split, shard_size, str(source / SPLIT_FILES[split][0]))
        counts[split] = index["num_samples"]
    write_json_atomic(root / _MARKER, {"source": str(source), "shard_size": shard_size, **counts})
    return result
