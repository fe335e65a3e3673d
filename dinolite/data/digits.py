"""scikit-learn's digits (1797 real 8x8 scans, shipped offline) as image folders and shards: the demo data.

``prepare_digits(root, size)`` upsamples each image (bicubic, grayscale -> RGB) to ``size`` pixels,
splits it stratified by class with a fixed seed (1500 train / 297 val), writes PNGs to
``root/{train,val}/<digit>/NNNN.png`` and shards to ``root/shards/{train,val}-NNNNNN.tar``. A marker
file written last makes the call idempotent: a complete earlier output is reused as is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dinolite.data.make_shards import make_shards
from dinolite.io import write_json_atomic

TRAIN_SIZE = 1500
SPLIT_SEED = 0


def _stratified_split(labels: np.ndarray, train_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn is an optional (demo) dependency.
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(indices, train_size=train_size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def prepare_digits(root: str | Path, size: int = 32, shard_size: int = 500) -> dict:
    """Write the digits data set under ``root`` (once) and return its locations:
    ``{"train": [shard pattern], "val": [shard pattern], "train_folder": str, "val_folder": str}``."""
    from sklearn.datasets import load_digits  # the demo extra: only the digits demo needs scikit-learn

    root = Path(root)
    if size < 8:
        raise ValueError(f"digits size must be >= 8 pixels, got {size}")
    marker = root / "digits.json"
    result = {
        "train": [str(root / "shards" / "train-*.tar")],
        "val": [str(root / "shards" / "val-*.tar")],
        "train_folder": str(root / "train"),
        "val_folder": str(root / "val"),
    }
    if marker.is_file():
        written = json.loads(marker.read_text())
        if written.get("size") == size:
            return result
        raise ValueError(f"{root} holds digits at {written.get('size')} px, asked for {size}: use another root")
    digits = load_digits()
    # pixel values are 0..16 ink intensities; white digits on black, as the scans
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = digits.target
    train_idx, val_idx = _stratified_split(labels, TRAIN_SIZE, SPLIT_SEED)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        folder = root / split
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted earlier attempt (no marker): start clean
        for i in idx:
            class_dir = folder / str(labels[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(class_dir / f"{i:04d}.png")
        make_shards(folder, root / "shards", shard_size=shard_size, prefix=split, overwrite=True, progress=False)
    write_json_atomic(marker, {"size": size, "train": len(train_idx), "val": len(val_idx), "seed": SPLIT_SEED})
    return result


def prepare_digits_segmentation(root: str | Path, size: int = 32, ink_threshold: int = 64) -> Path:
    """The digits as a semantic-segmentation set in ADE20K's layout, for ``eval/segmentation.py``.

    ``root/images/{training,validation}/NNNN.png`` (the upsampled digit, RGB) and
    ``root/annotations/{training,validation}/NNNN.png`` (one id per pixel: the digit + 1 on ink pixels,
    brighter than ``ink_threshold``, and 0 on the background), so ADE's "0 = other, shift by one"
    convention applies (``--reduce-zero-label``). Same stratified split as :func:`prepare_digits`.
    Idempotent like it. Returns ``root``.
    """
    from sklearn.datasets import load_digits  # the demo extra: only the digits demo needs scikit-learn

    root = Path(root)
    marker = root / "digits_segmentation.json"
    if marker.is_file():
        return root
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = digits.target
    train_idx, val_idx = _stratified_split(labels, TRAIN_SIZE, SPLIT_SEED)
    for split, idx in (("training", train_idx), ("validation", val_idx)):
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in idx:
            grey = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC)
            grey.convert("RGB").save(root / "images" / split / f"{i:04d}.png")
            mask = np.where(np.asarray(grey) > ink_threshold, labels[i] + 1, 0).astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{i:04d}.png")
    write_json_atomic(marker, {"size": size, "train": len(train_idx), "val": len(val_idx), "seed": SPLIT_SEED})
    return root
