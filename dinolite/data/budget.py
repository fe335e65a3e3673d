"""Byte budgets of the data path: no file or tar member larger than its budget is ever read whole.

A size is checked *before* the bytes are read (a file's ``fstat``, a tar member's header), and a read
never asks for more than the budget plus one byte, so a file that grows, a device or a ``/proc`` entry
that reports size 0 cannot exceed it either. The pixel budget of a decode is :mod:`dinolite.data.decode`'s.
What the budgets guarantee and what they do not: docs/data.md, "Budgets".
"""

from __future__ import annotations

import os
import stat

# Default of data.max_sample_bytes: every tar member of one sample together (as stored in the tar: its
# data plus one 512-byte header block per member), or one image file of a folder. Encoded images of
# photos under the default pixel limit are far smaller (JPEG ~1-5 bytes per 3 pixels); a raw BMP/TIFF of
# that many pixels is larger and needs the key raised.
DEFAULT_MAX_SAMPLE_BYTES = 64 * 2**20
# Default of data.shuffle_buffer_bytes: the encoded samples one data worker's shuffle buffer holds
# (5000 ImageNet JPEGs are ~0.55 GB); without it, the buffer's bound is shuffle_buffer * max_sample_bytes.
DEFAULT_SHUFFLE_BUFFER_BYTES = 2**30
# Index JSONs written by make_shards hold ~70 bytes per shard: 16 MiB is ~240k shards.
MAX_INDEX_JSON_BYTES = 16 * 2**20
# A make_shards list file: one path (and class) per line, ~100 bytes each.
MAX_LIST_FILE_BYTES = 2**30
# An IDX file (Fashion-MNIST's format), compressed as read and decompressed: the largest, the 60,000
# training images, is 47 MB decompressed (26 MB as gzip).
MAX_IDX_BYTES = 2**27
# A tar pax extended header or GNU long name: tarfile reads it whole before yielding the member. Real
# ones hold a few names and times (hundreds of bytes).
MAX_TAR_HEADER_BYTES = 2**20
# The block every tar member header occupies: charged to a sample's budget so that many empty members
# cannot make one sample unbounded either.
TAR_HEADER_BLOCK = 512


class InputTooLargeError(ValueError):
    """A file or tar member larger than its byte budget; it was not read."""


class NotARegularFileError(ValueError):
    """A path that names a FIFO, device or socket where a file was expected; it was not read."""


def check_budget(size: int, max_bytes: int, what: str, key: str) -> None:
    """:class:`InputTooLargeError` naming ``what`` and the config ``key`` when ``size > max_bytes``."""
    if size > max_bytes:
        raise InputTooLargeError(f"{what} is {size:,} bytes, above the limit of {max_bytes:,} bytes ({key}); not read")


def read_file_capped(path: str | os.PathLike, max_bytes: int, key: str) -> bytes:
    """The bytes of the regular file ``path``, refusing (without reading it) one above ``max_bytes``.

    A FIFO, device or socket is refused by name: opening a FIFO would block and a device such as
    ``/dev/zero`` never ends. ``key`` names the setting that holds the limit, for the message. Plain
    ``os`` calls: faster than a Python file object (benchmarks/RESULTS.md, "what the hostile-input
    checks cost").
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(
                f"{os.fspath(path)!r} is not a regular file (mode {stat.filemode(info.st_mode)}); not read"
            )
        check_budget(info.st_size, max_bytes, repr(os.fspath(path)), key)
        # One read of the size fstat gave and a byte more (reading max_bytes would allocate the whole
        # budget first); more reads only when the file is longer than it said (it grew, or /proc says 0)
        # or a read came back short, up to the budget.
        chunks = [os.read(fd, info.st_size + 1)]
        read = len(chunks[0])
        while chunks[-1] and read != info.st_size and read <= max_bytes:
            chunks.append(os.read(fd, min(max(info.st_size - read, 2**20), max_bytes + 1 - read)))
            read += len(chunks[-1])
    finally:
        os.close(fd)
    if read > max_bytes:
        raise InputTooLargeError(
            f"{os.fspath(path)!r} holds more than {max_bytes:,} bytes although its size said {info.st_size:,}: "
            f"above the limit ({key}); not read whole"
        )
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
