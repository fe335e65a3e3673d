"""A folder as a data source: its images (first-level subfolders are classes), or its tar shards as one set."""

from __future__ import annotations

import os

import pytest

from dinolite.data.folders import describe_folder, folder_images, folder_shards, shard_set_prefix


def _touch(path, content: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_class_subfolders_label_images_in_sorted_order(tmp_path):
    for name in ("dog/b.PNG", "cat/a.jpg", "dog/a.jpeg", "cat/notes.txt"):
        _touch(tmp_path / name)
    files, labels, classes = folder_images(tmp_path)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["cat/a.jpg", "dog/a.jpeg", "dog/b.PNG"]
    assert labels == [0, 1, 1] and classes == ["cat", "dog"]


def test_an_image_at_the_top_makes_the_folder_unlabelled(tmp_path):
    _touch(tmp_path / "top.png")
    _touch(tmp_path / "sub" / "x.png")
    _, labels, classes = folder_images(tmp_path)
    assert labels == [-1, -1] and classes == []


def test_a_link_loop_is_not_followed_and_a_linked_file_is_listed_once(tmp_path):
    _touch(tmp_path / "a" / "1.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # back to the root
    os.symlink(tmp_path / "a" / "1.png", tmp_path / "a" / "again.png")
    files, _, _ = folder_images(tmp_path)
    assert files == [str(tmp_path / "a" / "1.png")]


def test_a_fifo_named_like_an_image_is_never_listed(tmp_path):
    _touch(tmp_path / "c" / "ok.jpg")
    os.mkfifo(tmp_path / "c" / "blocks.jpg")
    files, _, _ = folder_images(tmp_path)
    assert files == [str(tmp_path / "c" / "ok.jpg")]


def test_shard_sets_are_named_by_the_part_before_the_number():
    assert shard_set_prefix("train-000012.tar") == "train-"
    assert shard_set_prefix("imagenet-0001-of-1024.tar.gz") == "imagenet-0001-of-"
    assert shard_set_prefix("all.tar") is None


def test_one_set_of_shards_is_listed_sorted_without_hidden_or_other_files(tmp_path):
    for name in ("s-000001.tgz", "s-000000.tar", ".s-000002.tar", "README.md"):
        _touch(tmp_path / name)
    assert folder_shards(str(tmp_path)) == [str(tmp_path / "s-000000.tar"), str(tmp_path / "s-000001.tgz")]


def test_two_shard_sets_or_one_shard_twice_are_refused_naming_them(tmp_path):
    for name in ("train-000000.tar", "val-000000.tar"):
        _touch(tmp_path / "two" / name)
    with pytest.raises(ValueError, match=r"holds 2 shard sets \('train-': 1 shard\(s\), train-000000.tar"):
        folder_shards(str(tmp_path / "two"))
    for name in ("s-000000.tar", "s-000000.tar.gz"):
        _touch(tmp_path / "twice" / name)
    with pytest.raises(ValueError, match="holds 's-000000.tar' and 's-000000.tar.gz': the same shard in two forms"):
        folder_shards(str(tmp_path / "twice"))


def test_a_folder_without_data_is_described_for_the_error(tmp_path):
    assert describe_folder(str(tmp_path)) == "it is empty"
    for name in ("a.txt", "b.txt", "c.txt"):
        _touch(tmp_path / name)
    (tmp_path / "sub").mkdir()
    assert describe_folder(str(tmp_path), limit=2) == "it holds 4 entries: a.txt, b.txt, ..."
