"""Evaluation data checked before any image is decoded: sources exist, class folders agree between train
and validation, labels lie in the class count; labels are read without decoding."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

from dinolite.eval.datasets import (
    IndexFilter,
    check_class_folders,
    check_labels,
    check_source,
    class_folders,
    source_labels,
)


def _image_folder(root, classes=("cat", "dog"), per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(b"not decoded here")
    return root


def _shard(path, labels):
    with tarfile.open(path, "w") as archive:
        for i, label in enumerate(labels):
            for ext, data in (("png", b"x"), ("cls", b"" if label is None else str(label).encode())):
                if ext == "cls" and label is None:
                    continue
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_sources_are_checked_naming_the_option(tmp_path):
    check_source([str(_image_folder(tmp_path / "train"))], "--train")
    with pytest.raises(ValueError, match="--train: no data given"):
        check_source([], "--train")
    with pytest.raises(FileNotFoundError, match="--val: .*gone does not exist"):
        check_source([str(tmp_path / "gone")], "--val")
    with pytest.raises(FileNotFoundError, match=r"--val: pattern '.*\*.tar' matches no file"):
        check_source([str(tmp_path / "*.tar")], "--val")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="--val: .*flat is a directory without class subfolders"):
        check_source([str(tmp_path / "flat")], "--val")
    check_source(["pipe:cat x.tar", "https://host/{0..3}.tar"], "--val")  # cannot be checked without running


def test_train_and_validation_must_have_the_same_classes(tmp_path):
    train = _image_folder(tmp_path / "train", ("cat", "dog"))
    assert class_folders(train) == ["cat", "dog"]
    check_class_folders([str(train)], [str(_image_folder(tmp_path / "val", ("cat", "dog")))])
    other = _image_folder(tmp_path / "other", ("cat", "dog", "eel"))
    with pytest.raises(ValueError, match=r"only in validation: \['eel'\]: label ids would not match"):
        check_class_folders([str(train)], [str(other)])


def test_labels_are_read_without_decoding(tmp_path):
    assert source_labels([str(_image_folder(tmp_path / "f"))]).tolist() == [0, 0, 1, 1]
    shard = _shard(tmp_path / "s-000000.tar", [3, None, 1])
    assert source_labels([str(shard)]).tolist() == [3, -1, 1]


def test_labels_outside_the_class_count_or_missing_are_named():
    check_labels(torch.tensor([0, 2, 1]), 3, "train")
    with pytest.raises(ValueError, match="train: label 3 is outside the class count 3"):
        check_labels(torch.tensor([0, 3]), 3, "train")
    with pytest.raises(ValueError, match="val: label -1: a sample without a class label"):
        check_labels(torch.tensor([-1, 0]), None, "val")
    with pytest.raises(ValueError, match="val: no samples"):
        check_labels(torch.zeros(0, dtype=torch.long), None, "val")


def test_the_index_filter_keeps_the_chosen_items():
    items = [(f"image {i}", i % 2, i) for i in range(6)]
    assert [item[2] for item in IndexFilter(items, lambda index: index >= 4)] == [4, 5]
