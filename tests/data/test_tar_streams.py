"""The stream under a tar shard: every compression tarfile knows gives back the same bytes, gzip read in
bounded steps across concatenated members; members over the byte budget are named."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import pytest

from dinolite.data.budget import TAR_HEADER_BLOCK
from dinolite.data.tar_streams import GzipStream, decompressed_stream, member_over_budget

PAYLOAD = bytes(range(256)) * 2000  # 512 000 bytes: more than one read step


def _read_all(stream, size: int = 7000) -> bytes:
    parts = []
    while chunk := stream.read(size):
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, lambda data: data])
def test_every_compression_decompresses_to_the_same_bytes(compress):
    stream = decompressed_stream(io.BufferedReader(io.BytesIO(compress(PAYLOAD))))
    assert _read_all(stream) == PAYLOAD


def test_concatenated_gzip_members_and_zero_padding_read_as_one_stream():
    data = gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]) + b"\0" * 512
    assert _read_all(GzipStream(io.BufferedReader(io.BytesIO(data)))) == PAYLOAD


def test_a_pipe_giving_fewer_than_ten_bytes_is_replayed_whole():
    class Trickle(io.RawIOBase):  # a pipe handing out 3 bytes per read
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            n = min(3, len(buffer), len(self.data))
            buffer[:n], self.data = self.data[:n], self.data[n:]
            return n

    stream = decompressed_stream(io.BufferedReader(Trickle(gzip.compress(PAYLOAD[:5000])), buffer_size=3))
    assert _read_all(stream) == PAYLOAD[:5000]


def test_a_member_over_the_sample_budget_is_named_with_the_limit():
    member = tarfile.TarInfo("000001.jpg")
    member.size = 1000
    assert member_over_budget(member, sample_bytes=0, max_sample_bytes=1000 + TAR_HEADER_BLOCK) is None
    reason = member_over_budget(member, sample_bytes=1, max_sample_bytes=1000 + TAR_HEADER_BLOCK)
    assert reason is not None and "'000001.jpg' is 1,000 bytes" in reason and "data.max_sample_bytes" in reason
