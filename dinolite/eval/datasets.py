"""Labelled evaluation data: an image folder (one subfolder per class) or webdataset shards (``cls``).

Reading is the data package's job (:func:`dinolite.data.eval_dataset.build_eval_dataset`, which yields
``(image, label, index)`` once per sample, split across ranks); this module checks the sources first so
that a typo fails at once with the path at fault, not after minutes of feature extraction.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.folders import IMAGE_EXTENSIONS, folder_shards
from dinolite.data.sources import SourceError, read_unit, resolve_source, sample_label

_PATTERN_CHARS = re.compile(r"[*?\[]")


def check_source(source: Sequence[str], option: str) -> None:
    """Fail early on an empty source, a missing plain path or an image folder without class folders."""
    if not source:
        raise ValueError(f"{option}: no data given")
    for entry in source:
        if entry.startswith("pipe:") or "://" in entry:
            continue  # commands and remote URLs cannot be checked without running them
        if "{" in entry:
            continue  # brace expansion: expand_source names the pattern if nothing matches
        if _PATTERN_CHARS.search(entry):
            if not glob.glob(entry):
                raise FileNotFoundError(f"{option}: pattern {entry!r} matches no file")
            continue
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"{option}: {entry} does not exist")
        if path.is_dir() and not folder_shards(entry):  # a shard folder (one set) is read as shards
            classes = class_folders(path)
            if not classes:
                raise ValueError(
                    f"{option}: {entry} is a directory without class subfolders (expected ROOT/CLASS/IMAGE) "
                    "and without shards (.tar, .tar.gz, .tgz)"
                )


def class_folders(root: Path) -> list[str]:
    """Sorted names of the subfolders of ``root`` that hold at least one image."""
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())
    )


def check_class_folders(train_source: Sequence[str], val_source: Sequence[str]) -> None:
    """With image folders on both sides, every validation class must exist in train (same label ids)."""
    if len(train_source) != 1 or len(val_source) != 1:
        return
    train_dir, val_dir = Path(train_source[0]), Path(val_source[0])
    if not (train_dir.is_dir() and val_dir.is_dir()):
        return
    train_classes, val_classes = class_folders(train_dir), class_folders(val_dir)
    if train_classes != val_classes:
        extra = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"class folders differ between {train_dir} ({len(train_classes)}) and {val_dir} ({len(val_classes)})"
            + (f"; only in validation: {extra[:10]}" if extra else "")
            + ": label ids would not match"
        )


def build_labelled_dataset(
    source: Sequence[str], transform: Callable, rank: int, world_size: int, option: str
) -> Dataset:
    """Checked source -> ``build_eval_dataset(source, transform, rank, world_size)``."""
    check_source(source, option)

    return build_eval_dataset(list(source), transform, rank=rank, world_size=world_size)


def source_labels(source: Sequence[str]) -> torch.Tensor:
    """The label of every sample of ``source``, in order, without decoding an image: an image folder's
    from its class folders, a shard's from each sample's ``cls`` (-1 for none). A damaged shard gives
    the labels before the damage, as :func:`build_eval_dataset` gives its samples (and warns)."""
    labels: list[int] = []
    for unit in resolve_source(list(source)):
        if not unit.is_shard:
            labels.append(unit.label)
            continue
        try:
            labels.extend(sample_label(sample) for sample in read_unit(unit))
        except (SourceError, OSError):
            continue
    return torch.tensor(labels, dtype=torch.long)


def check_labels(labels: torch.Tensor, num_classes: Optional[int], what: str) -> None:
    """Every label must lie in ``[0, num_classes)`` (``num_classes`` None: only ``>= 0``; -1 marks a
    sample without a ``cls``)."""
    if labels.numel() == 0:
        raise ValueError(f"{what}: no samples")
    low, high = int(labels.min()), int(labels.max())
    if num_classes is None:
        if low < 0:
            raise ValueError(f"{what}: label {low}: a sample without a class label (cls) or a negative label")
        return
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{what}: label {bad} is outside the class count {num_classes} (labels must be 0..{num_classes - 1})"
        )


class IndexFilter(torch.utils.data.IterableDataset):
    """The ``(image, label, index)`` items of ``dataset`` whose index passes ``keep`` (e.g. held-out)."""

    def __init__(self, dataset, keep: Callable[[int], bool]):
        self.dataset, self.keep = dataset, keep

    def __iter__(self):
        items = (
            self.dataset
            if isinstance(self.dataset, torch.utils.data.IterableDataset)
            else (self.dataset[i] for i in range(len(self.dataset)))
        )
        return (item for item in items if self.keep(int(item[2])))
