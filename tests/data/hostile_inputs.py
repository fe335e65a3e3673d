"""Builders of hostile data-path inputs (issue 24), each a few bytes to a few hundred KB on disk.

Every builder takes a fresh folder and returns the data source (``data.source`` entries) that holds
the hostile input next to ordinary samples, so that a case is one line of the table in
``test_hostile_data.py``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path
from typing import Callable, Union

from PIL import Image

from tests.data.test_bad_data import png

Member = tuple[str, Union[bytes, int]]  # (name, data) or (name, length of a run of zero bytes)
Builder = Callable[[Path], list[str]]  # a fresh folder -> the data source holding the hostile input
MiB = 2**20


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as read: a gigabyte member costs no memory to write."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def lying_gif(side: int = 3000) -> bytes:
    """43 bytes: a GIF whose header (logical screen) says 1x1 and whose one 1x1 frame sits at
    ``(side - 1, side - 1)``; Pillow grows the image to ``side x side`` to hold it."""
    buf = io.BytesIO()
    img = Image.new("P", (1, 1), 0)
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.save(buf, "GIF")
    data = bytearray(buf.getvalue())
    descriptor = data.index(b"\x2c", 13)  # the image descriptor, after the header and palette
    data[descriptor + 1 : descriptor + 5] = struct.pack("<HH", side - 1, side - 1)
    return bytes(data)


def gif_screen_smaller_than_frame(side: int = 3000) -> bytes:
    """~9 KB: one ``side x side`` frame under a logical screen patched to say 1x1."""
    buf = io.BytesIO()
    img = Image.new("P", (side, side), 0)
    img.putpalette([0, 0, 0, 255, 255, 255])
    img.save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 1, 1)
    return bytes(data)


def write_tar(path: Path, members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> Path:
    """A tar (gzipped when the name ends in .gz/.tgz) of ``members``, each a regular file."""
    gz = path.name.endswith((".gz", ".tgz"))
    with tarfile.open(path, "w:gz" if gz else "w", format=fmt, **({"compresslevel": 1} if gz else {})) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            archive.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))
    return path


def samples(*middle: Member, cls: bool = True) -> list[Member]:
    """Three good samples k0, k2, k3 (PNG + cls) around the members ``middle`` (the hostile k1)."""

    def good(key: str, value: int) -> list[Member]:
        return [(f"{key}.png", png(value))] + ([(f"{key}.cls", b"0")] if cls else [])

    return good("k0", 10) + list(middle) + good("k2", 20) + good("k3", 30)


def shard(*middle: Member, name: str = "s-000000.tar") -> Builder:
    def build(root: Path) -> list[str]:
        return [str(write_tar(root / name, samples(*middle)))]

    return build


def large_samples(count: int, size: int) -> Builder:
    """A .tar.gz of ``count`` samples of one ``size``-byte member each (zeros: ~1/1000 of it gzipped)."""

    def build(root: Path) -> list[str]:
        return [str(write_tar(root / "s-000000.tar.gz", [(f"k{i:03d}.png", size) for i in range(count)]))]

    return build


def extended_header_shard(fmt: int, size: int) -> Builder:
    """A good sample, then a member whose pax header (PAX) or GNU long name (GNU) holds ``size`` bytes."""

    def build(root: Path) -> list[str]:
        path = root / "s-000000.tar.gz"
        with tarfile.open(path, "w:gz", format=fmt, compresslevel=1) as archive:
            for name, data in samples(cls=False)[:1]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            if fmt == tarfile.PAX_FORMAT:
                info = tarfile.TarInfo("k1.png")
                info.pax_headers = {"comment": "x" * size}
            else:
                info = tarfile.TarInfo("a" * size + ".png")
            archive.addfile(info, io.BytesIO(b""))
        return [str(path)]

    return build


def many_empty_members(count: int) -> Builder:
    """A tar of ``count`` empty members of one key: 512 bytes each (gzip would shrink each to a few bytes)."""

    def build(root: Path) -> list[str]:
        path = root / "s-000000.tar"
        with tarfile.open(path, "w") as archive:
            for _ in range(count):
                archive.addfile(tarfile.TarInfo("k0.cls"))
        return [str(path)]

    return build


def image_folder(*extra: str) -> Builder:
    """root/a/{x,y,z}.png, then ``extra`` entries: ``"NAME -> TARGET"`` (a symlink), ``"fifo NAME"``."""

    def build(root: Path) -> list[str]:
        folder = root / "images"
        (folder / "a").mkdir(parents=True)
        for i, name in enumerate("xyz"):
            (folder / "a" / f"{name}.png").write_bytes(png(40 * i))
        for entry in extra:
            if entry.startswith("fifo "):
                os.mkfifo(folder / entry[5:])
            else:
                name, target = entry.split(" -> ")
                os.symlink(target, folder / name)
        return [str(folder)]

    return build


def folder_with(*files: tuple[str, Union[bytes, int]]) -> Builder:
    """An image folder root/a/NAME for each ``(name, bytes or size)``; a size is that many random-looking bytes."""

    def build(root: Path) -> list[str]:
        folder = root / "images"
        (folder / "a").mkdir(parents=True)
        for name, data in files:
            (folder / "a" / name).write_bytes(os.urandom(data) if isinstance(data, int) else data)
        return [str(folder)]

    return build


def shard_folder(*names: str) -> Builder:
    """A folder of shards named ``names`` (each the three good samples), nothing else."""

    def build(root: Path) -> list[str]:
        folder = root / "shards"
        folder.mkdir()
        for name in names:
            write_tar(folder / name, samples())
        return [str(folder)]

    return build


def indexed_shard(index: Union[dict, int]) -> Builder:
    """A shard and ``shard-index.json``: the dict as JSON (``{bytes}``: the shard's size), or an int: a
    sparse file of that many bytes."""

    def build(root: Path) -> list[str]:
        path = write_tar(root / "shard-000000.tar", samples())
        index_path = root / "shard-index.json"
        if isinstance(index, int):
            with open(index_path, "wb") as f:
                f.truncate(index)
        else:
            text = json.dumps(index).replace('"{bytes}"', str(path.stat().st_size))
            index_path.write_text(text)
        return [str(path)]

    return build
