"""How Fashion-MNIST's shards are stored: bytes on disk and time to write, per layout, on the same images.

Layouts (every one a valid shard set the loader reads; each sample a PNG and its ``cls``):

* ``grey_png0_targz`` (shipped): the 28 px grey image as an uncompressed PNG, the tar gzip'd (level 6);
* ``grey_png_targz``: the PNG compressed (Pillow's default level), the tar gzip'd;
* ``grey_png_tar``: the PNG compressed, a plain tar;
* ``rgb_png_tar``: grey copied to RGB, PNG compressed, a plain tar (the digits' layout).

Each layout is written with the shipped :class:`~dinolite.data.shard_writer.ShardWriter`; the time covers
encoding and writing (the IDX read is done once, before). Also times the shipped layout's full
``prepare_fashion_mnist`` (all 70,000 images) unless ``--quick``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/fashion_mnist_shards.py --output fashion_shards.json
    python benchmarks/fashion_mnist_shards.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from dinolite.data.fashion_mnist import encode_png, load_split, prepare_fashion_mnist  # noqa: E402
from dinolite.data.shard_writer import ShardWriter  # noqa: E402
from dinolite.io import write_json_atomic  # noqa: E402


def _png(image: np.ndarray, rgb: bool) -> bytes:
    out = io.BytesIO()
    picture = Image.fromarray(image, mode="L")
    (picture.convert("RGB") if rgb else picture).save(out, "PNG")
    return out.getvalue()


LAYOUTS: dict[str, tuple[Callable[[np.ndarray], bytes], bool]] = {
    "grey_png0_targz": (encode_png, True),
    "grey_png_targz": (lambda image: _png(image, rgb=False), True),
    "grey_png_tar": (lambda image: _png(image, rgb=False), False),
    "rgb_png_tar": (lambda image: _png(image, rgb=True), False),
}


def measure_layout(name: str, images: np.ndarray, labels: np.ndarray, folder: Path) -> dict:
    encode, compress = LAYOUTS[name]
    folder.mkdir(parents=True)
    start = time.perf_counter()
    writer = ShardWriter(folder, name, 2500, compress=compress)
    for position, (image, label) in enumerate(zip(images, labels.tolist())):
        writer.write(f"{position:09d}", {"png": encode(image), "cls": str(label).encode()})
    writer.close()
    seconds = time.perf_counter() - start
    size = sum(shard["bytes"] for shard in writer.shards)
    return {"bytes_per_image": round(size / len(images), 1), "us_per_image": round(seconds / len(images) * 1e6, 1)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="test images per layout (of 10,000)")
    parser.add_argument("--quick", action="store_true", help="500 images, no full build")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    images, labels = load_split("val")
    count = 500 if args.quick else min(args.images, len(images))
    report: dict = {"images": count, "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in LAYOUTS:
            report["layouts"][name] = measure_layout(name, images[:count], labels[:count], Path(tmp) / name)
        if not args.quick:
            start = time.perf_counter()
            prepare_fashion_mnist(Path(tmp) / "full")
            report["full_build_seconds"] = round(time.perf_counter() - start, 1)
            report["full_build_bytes"] = sum(p.stat().st_size for p in (Path(tmp) / "full").rglob("*") if p.is_file())
    print(json.dumps(report, indent=1))
    if args.output:
        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
