"""Tiny real images (JPEG and PNG, 3 classes) and their shards, built once per test session."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinolite.data.make_shards import make_shards

N_CLASSES = 3
PER_CLASS = 8


def textured_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field plus noise: compresses like a photo, differs per seed."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """root/class_k/img_i.{jpg,png}: 24 images of varying sizes, JPEG and PNG mixed."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        (root / f"class_{c}").mkdir()
        for i in range(PER_CLASS):
            img = textured_image(rng, 40 + 3 * i, 30 + 2 * c)
            fmt, ext = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
            (root / f"class_{c}" / f"img_{i}.{ext}").write_bytes(encode(img, fmt))
    return root


@pytest.fixture(scope="session")
def shard_dir(image_folder, tmp_path_factory) -> Path:
    """The image folder as 6 shards of 4 samples."""
    out = tmp_path_factory.mktemp("shards")
    make_shards(image_folder, out, shard_size=4, progress=False)
    return out
