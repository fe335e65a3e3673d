"""Write an image folder (or a list of image paths) as webdataset tar shards plus an index JSON.

    dinolite-shards SRC OUT [--shard-size N] [--workers W] [--max-side PX]

Each sample is ``{key}.{jpg|png|webp|bmp}`` (the original encoded bytes, or a re-encode when
``--max-side`` shrinks it), ``{key}.cls`` (class index, when SRC has class subfolders or the list
gives classes) and ``{key}.json`` (source path and class name). Keys are the sample's running number,
so they are unique. Files that PIL cannot fully decode are skipped and reported. Each shard is written
to a hidden temp name and renamed when complete, and ``{prefix}-index.json`` is written last, so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

from PIL import Image

from dinolite.data.budget import DEFAULT_MAX_SAMPLE_BYTES, MAX_LIST_FILE_BYTES, read_file_capped
from dinolite.data.decode import DEFAULT_MAX_IMAGE_PIXELS, open_checked, pil_to_rgb_uint8
from dinolite.data.shard_writer import ShardWriter, write_shard_index
from dinolite.data.sources import folder_images
from dinolite.progress import progress_bar

FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "MPO": "jpg"}


def _list_source(src: Path) -> tuple[list[str], list[str], list[str]]:
    """(paths, class names per path or "", sorted class list) from a folder or a text file of paths.

    A list file has one path per line, optionally followed by a TAB and a class name; relative paths
    are relative to the list file.
    """
    if src.is_dir():
        files, labels, classes = folder_images(src)
        return files, [classes[i] if i >= 0 else "" for i in labels], classes
    if src.is_file():
        paths, names = [], []
        for line in read_file_capped(src, MAX_LIST_FILE_BYTES, "list files").decode().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            path, _, name = line.partition("\t")
            path = path.strip()
            if not os.path.isabs(path):
                path = str(src.parent / path)
            paths.append(path)
            names.append(name.strip())
        if any(names) and not all(names):
            raise ValueError(f"{src}: either every line or no line gives a class (TAB-separated)")
        classes = sorted(set(names)) if all(names) and names else []
        return paths, names, classes
    raise FileNotFoundError(f"make_shards source {str(src)!r} is neither a folder nor a list file")


def encode_sample(path: str, max_side: Optional[int]) -> tuple[Optional[bytes], str, str]:
    """(encoded bytes, extension, error). Verifies the image decodes; re-encodes only to shrink it.

    The loader's default budgets apply: a file above ``DEFAULT_MAX_SAMPLE_BYTES`` is skipped unread, a
    decompression bomb (by its header or its first frame's real size) undecoded."""
    try:
        data = read_file_capped(path, DEFAULT_MAX_SAMPLE_BYTES, "data.max_sample_bytes's default")
        with open_checked(data, DEFAULT_MAX_IMAGE_PIXELS) as img:
            fmt = img.format or ""
            img.load()  # full decode: catches truncated files that Image.verify() lets through
            if fmt not in FORMAT_EXTENSIONS:
                return None, "", f"unsupported image format {fmt or 'unknown'}"
            ext = FORMAT_EXTENSIONS[fmt]
            if max_side and max(img.size) > max_side:
                scale = max_side / max(img.size)
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                # Not img.convert("RGB"): it clips 16-bit images to white; this scales them.
                rgb = Image.fromarray(pil_to_rgb_uint8(img).permute(1, 2, 0).numpy())
                resized = rgb.resize(size, Image.BICUBIC)
                out = io.BytesIO()
                if ext == "png":
                    resized.save(out, "PNG")
                else:
                    ext = "jpg"
                    resized.save(out, "JPEG", quality=95)
                data = out.getvalue()
        return data, ext, ""
    except Exception as exc:  # PIL raises many types for bad files; all mean "skip it"
        return None, "", f"{type(exc).__name__}: {exc}"


def _encode_star(args: tuple[str, Optional[int]]) -> tuple[Optional[bytes], str, str]:
    return encode_sample(*args)


def _results(paths: Sequence[str], max_side: Optional[int], workers: int) -> Iterator[tuple[Optional[bytes], str, str]]:
    if workers <= 1:
        for path in paths:
            yield encode_sample(path, max_side)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Ordered map keeps the shard layout independent of the number of workers.
        yield from pool.map(_encode_star, ((p, max_side) for p in paths), chunksize=16)


def make_shards(
    src: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    workers: int = 1,
    max_side: Optional[int] = None,
    prefix: str = "shard",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write ``src`` (image folder or list file) as shards in ``out``; returns the index dict, also
    saved as ``out/{prefix}-index.json``: shards (name, samples), num_samples, classes, skipped."""
    src, out = Path(src), Path(out)
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    if max_side is not None and max_side <= 0:
        raise ValueError(f"max_side must be > 0, got {max_side}")
    paths, class_names, classes = _list_source(src)
    if not paths:
        raise ValueError(f"make_shards source {str(src)!r} lists no image files")
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds {len(existing)} '{prefix}-*.tar' shards; pass overwrite=True "
            "(--overwrite) or another prefix"
        )
    class_index = {name: i for i, name in enumerate(classes)}
    root = src if src.is_dir() else src.parent
    writer = ShardWriter(out, prefix, shard_size)
    skipped: list[tuple[str, str]] = []
    results = _results(paths, max_side, workers)
    for path, name, (data, ext, error) in progress_bar(
        zip(paths, class_names, results), total=len(paths), desc=f"shards -> {out}", unit="img", enabled=progress
    ):
        if data is None:
            skipped.append((path, error))
            continue
        key = f"{writer.num_written:09d}"
        members = {ext: data}
        meta = {"path": os.path.relpath(path, root)}
        if classes:
            members["cls"] = str(class_index[name]).encode()
            meta["class"] = name
        members["json"] = json.dumps(meta).encode()
        writer.write(key, members)
    writer.close()
    for stale in existing[len(writer.shards) :]:
        stale.unlink()  # left over from an earlier, larger run
    return write_shard_index(writer, str(src), classes, skipped)
