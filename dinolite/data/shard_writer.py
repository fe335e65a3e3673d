"""Writing webdataset tar shards: samples in, ``{prefix}-NNNNNN.tar`` (or ``.tar.gz``) files and their
index JSON out, each shard renamed into place when complete and the index written last, so an interrupted
writer never leaves a half-written file under a final name. Used by ``make_shards`` (image folders and
lists) and by the built-in data sets.
"""

from __future__ import annotations

import io
import os
import tarfile
from gzip import GzipFile
from pathlib import Path
from typing import BinaryIO, Optional

from dinolite.io import write_json_atomic

INDEX_FORMAT = "dinolite-shards/1"


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: same input, same bytes
    archive.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Shards ``{prefix}-%06d.tar`` of ``shard_size`` samples, each renamed into place when complete.

    ``compress``: ``{prefix}-%06d.tar.gz`` instead, compressed with a zero mtime and no file name in the
    gzip header, so that the same samples give the same bytes."""

    def __init__(self, out: Path, prefix: str, shard_size: int, compress: bool = False) -> None:
        self.out, self.prefix, self.shard_size, self.compress = out, prefix, shard_size, compress
        self.shards: list[dict] = []
        self._archive: Optional[tarfile.TarFile] = None
        self._compressed: Optional[tuple[GzipFile, BinaryIO]] = None  # the gzip layer and its file
        self._count = 0
        self.num_written = 0

    def _name(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}.tar" + (".gz" if self.compress else "")

    def _open(self) -> tarfile.TarFile:
        self._tmp = self.out / f".{self._name(len(self.shards))}.tmp"
        if not self.compress:
            return tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        file = open(self._tmp, "wb")
        # level 6, zlib's default: GzipFile's own 9 took 14x longer on tar headers and small PNGs for 4% less
        self._compressed = (GzipFile(filename="", fileobj=file, mode="wb", compresslevel=6, mtime=0), file)
        return tarfile.open(fileobj=self._compressed[0], mode="w", format=tarfile.USTAR_FORMAT)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._archive is None:
            self._archive = self._open()
            self._count = 0
        for ext, data in members.items():
            _add_member(self._archive, f"{key}.{ext}", data)
        self._count += 1
        self.num_written += 1
        if self._count == self.shard_size:
            self.close()

    def close(self) -> None:
        if self._archive is None:
            return
        self._archive.close()
        if self._compressed is not None:  # a tar or gzip layer given a fileobj does not close it
            for layer in self._compressed:
                layer.close()
            self._compressed = None
        name = self._name(len(self.shards))
        os.replace(self._tmp, self.out / name)
        # The size lets readers tell a shard damaged after this index was written (its count is then
        # not trusted for resume arithmetic; see sources.resolve_source).
        self.shards.append({"name": name, "samples": self._count, "bytes": (self.out / name).stat().st_size})
        self._archive = None


def write_shard_index(writer: ShardWriter, source: str, classes: list[str], skipped: list[tuple[str, str]]) -> dict:
    """Write ``{prefix}-index.json`` beside the closed ``writer``'s shards (last: its presence means they
    are complete) and return it: the shards (name, samples, bytes), their total, the class names."""
    index = {
        "format": INDEX_FORMAT,
        "source": source,
        "prefix": writer.prefix,
        "shards": writer.shards,
        "num_samples": sum(s["samples"] for s in writer.shards),
        "classes": classes,
        "skipped": {"count": len(skipped), "first": [f"{p}: {e}" for p, e in skipped[:10]]},
    }
    write_json_atomic(writer.out / f"{writer.prefix}-index.json", index, indent=1)
    return index
