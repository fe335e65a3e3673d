"""The byte stream under a tar shard, decompressed in bounded steps, and the byte budget of its members.

Not tarfile's own ``r|*``: its stream decompresses each 10 KiB it reads whole (10 MB from a gzip of
zeros) and copies what remains of that on every later read, so skipping a huge member of a small shard
takes time and memory that grow with the member. Here one read decompresses at most what it asks for
(gzip: :class:`GzipStream`; bzip2 and xz: the standard library's readers), and unread members are
skipped in steps of ``SKIP_STEP``. Measured, both ways: benchmarks/RESULTS.md, "Data: what the
hostile-input checks cost".
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from typing import BinaryIO, Optional

from dinolite.data.budget import MAX_TAR_HEADER_BYTES, TAR_HEADER_BLOCK

SKIP_STEP = 2**20
_INPUT_STEP = 2**16
_OUTPUT_STEP = 2**18
_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2, CM = deflate
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16


def member_over_budget(member: tarfile.TarInfo, sample_bytes: int, max_sample_bytes: int) -> Optional[str]:
    """Why ``member`` may not be read into a sample that already holds ``sample_bytes``; None if it may."""
    total = sample_bytes + TAR_HEADER_BLOCK + member.size
    if total <= max_sample_bytes:
        return None
    return (
        f"member {member.name!r} is {member.size:,} bytes (decompressed), which brings its sample to {total:,} "
        f"bytes (one {TAR_HEADER_BLOCK}-byte header per member included), above the limit of "
        f"{max_sample_bytes:,} bytes (data.max_sample_bytes); the sample is not read"
    )


def skip_member_data(archive: tarfile.TarFile) -> None:
    """Stream past the data of the member just read without keeping it, in steps of ``SKIP_STEP``
    (``archive.next()`` would skip it itself, in steps of 10 KiB: a Python call per 10 KiB)."""
    remaining = archive.offset - archive.fileobj.tell()
    while remaining > 0:
        step = archive.fileobj.read(min(remaining, SKIP_STEP))
        if not step:
            return  # cut short: archive.next() reports it
        remaining -= len(step)


class GzipStream:
    """The decompressed bytes of a gzip stream (RFC 1952: its members one after the other, zero padding
    between them skipped), for tarfile's stream reads; one read decompresses at most ``_OUTPUT_STEP``
    bytes, or what was asked if more.

    Raw deflate, like tarfile's own stream: each member's CRC32 is not verified (a measurable share of a
    JPEG's decode: benchmarks/RESULTS.md, "Data: what the hostile-input checks cost"; tarfile never
    verified it either). A damaged stream is
    found where it breaks the deflate data, a tar header or an image.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pending = b""  # input not yet given to the decompressor
        self.decompressor: Optional["zlib._Decompress"] = None  # None between members
        self.out, self.start = b"", 0  # decompressed, not yet read from ``start`` on

    def read(self, size: int = -1) -> bytes:
        if self.start >= len(self.out):
            self.out, self.start = self._decompress(max(size, _OUTPUT_STEP)), 0
        end = len(self.out) if size < 0 else self.start + size
        chunk = self.out[self.start : end]
        self.start += len(chunk)
        return chunk

    def _decompress(self, limit: int) -> bytes:
        while True:
            if self.decompressor is None and not self._begin_member():
                return b""
            if not self.pending and not self._fill(1):
                raise EOFError("the gzip stream ends before its end-of-stream marker")
            out = self.decompressor.decompress(self.pending, limit)
            self.pending = self.decompressor.unconsumed_tail
            if self.decompressor.eof:  # the member's 8-byte trailer (CRC32, size) follows
                self.pending = self.decompressor.unused_data
                if not self._fill(8):
                    raise EOFError("the gzip stream ends inside a member's trailer")
                self.pending, self.decompressor = self.pending[8:], None
            if out:
                return out

    def _fill(self, n: int) -> bool:
        """Make ``pending`` hold at least ``n`` bytes; False when the stream ends first."""
        while len(self.pending) < n:
            chunk = self.stream.read(max(_INPUT_STEP, n - len(self.pending)))
            if not chunk:
                return False
            self.pending += chunk
        return True

    def _begin_member(self) -> bool:
        """Consume a member header; False at the end of the stream (after any zero padding)."""
        while not self.pending.lstrip(b"\0"):
            self.pending = b""
            if not self._fill(1):
                return False
        self.pending = self.pending.lstrip(b"\0")
        if not self._fill(10):
            raise EOFError("the gzip stream ends inside a member header")
        if self.pending[:3] != _GZIP_MAGIC:
            raise gzip.BadGzipFile(f"not a gzip member header: {self.pending[:3]!r}")
        flags, end = self.pending[3], 10
        if flags & _FEXTRA:  # a 2-byte length, then that many bytes
            self._need(end + 2)
            end = self._need(end + 2 + int.from_bytes(self.pending[end : end + 2], "little"))
        for flag in (_FNAME, _FCOMMENT):  # zero-terminated
            if flags & flag:
                while (zero := self.pending.find(b"\0", end)) < 0:
                    self._need(len(self.pending) + 1)
                end = zero + 1
        if flags & _FHCRC:
            end += 2
        self.pending = self.pending[self._need(end) :]
        self.decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
        return True

    def _need(self, end: int) -> int:
        """``end``, once ``pending`` holds that many header bytes; a header past the limit is refused."""
        if end > MAX_TAR_HEADER_BYTES:
            raise gzip.BadGzipFile(f"a gzip member header longer than {MAX_TAR_HEADER_BYTES:,} bytes")
        if not self._fill(end):
            raise EOFError("the gzip stream ends inside a member header")
        return end


class _Replayed(io.RawIOBase):
    """``head``, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: io.BufferedReader) -> None:
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        return self.stream.readinto(buffer)


def decompressed_stream(stream: io.BufferedReader) -> BinaryIO:
    """The tar stream inside ``stream``: gzip, bzip2 and xz are recognised by their magic bytes (as
    tarfile's ``r|*`` does), anything else is returned as it is."""
    magic = stream.peek(10)[:10]
    if len(magic) < 10:  # a pipe may give fewer bytes per read: read them, then replay them
        magic = stream.read(10)
        stream = io.BufferedReader(_Replayed(magic, stream))
    if magic.startswith(b"\x1f\x8b"):
        return GzipStream(stream)  # type: ignore[return-value]
    if magic[:3] == b"BZh" and magic[4:10] == b"1AY&SY":
        return bz2.BZ2File(stream)
    if magic.startswith((b"\xfd7zXZ", b"\x5d\x00\x00\x80")):
        return lzma.LZMAFile(stream)
    return stream
