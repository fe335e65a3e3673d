"""Fashion-MNIST as a built-in data set: the IDX reader within its budget, the shards against a direct
read of the Debian package's files, determinism, and the error without the package."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dinolite.data import fashion_mnist as fm
from dinolite.data.budget import InputTooLargeError
from dinolite.data.decode import decode_image
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.samples import image_bytes, sample_label
from dinolite.data.sources import read_unit, resolve_source
from tests.data.fashion_idx import idx_bytes, needs_package, read_debian, synthetic_splits, write_idx_set


def _raw_samples(pattern: list[str]) -> list[dict]:
    units = resolve_source(pattern)
    return [sample for unit in units for sample in read_unit(unit)]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Without the package: the error, and the reader on IDX files written here
# ------------------------------------------------------------------------------------------------


def test_missing_package_names_the_package_and_its_apt_line(tmp_path, monkeypatch):
    monkeypatch.delenv(fm.DIR_ENV, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "not-installed")
    with pytest.raises(fm.FashionMNISTNotFoundError) as caught:
        fm.prepare_fashion_mnist(tmp_path / "out")
    message = str(caught.value)
    assert "dataset-fashion-mnist" in message and "apt-get install dataset-fashion-mnist" in message
    assert "not-installed" in message and "train-images-idx3-ubyte.gz" in message and fm.DIR_ENV in message
    assert not (tmp_path / "out" / "fashion_mnist.json").exists()


def test_environment_folder_replaces_the_debian_one(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setenv(fm.DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(fm.FashionMNISTNotFoundError, match=r"\$DINOLITE_FASHION_MNIST_DIR '.*empty'"):
        fm.fashion_mnist_dir()
    write_idx_set(tmp_path / "empty", synthetic_splits(3, 2))
    assert fm.fashion_mnist_dir() == tmp_path / "empty"


def test_prepare_writes_every_image_and_label_in_idx_order(tmp_path):
    splits = synthetic_splits(train=23, val=7)
    source = write_idx_set(tmp_path / "idx", splits)
    out = fm.prepare_fashion_mnist(tmp_path / "out", shard_size=10, directory=source)
    assert out == {
        "train": [str(tmp_path / "out" / "train" / "train-*.tar.gz")],
        "train_folder": str(tmp_path / "out" / "train"),
        "val": [str(tmp_path / "out" / "val" / "val-*.tar.gz")],
        "val_folder": str(tmp_path / "out" / "val"),
    }
    for split, (images, labels) in splits.items():
        samples = _raw_samples(out[split])
        assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(len(images))]
        assert [sample_label(s) for s in samples] == labels.tolist()
        for sample, image in zip(samples, images):
            decoded = decode_image(image_bytes(sample))
            assert decoded.shape == (3, 28, 28)  # stored grey, decoded to three equal channels
            assert (decoded == decoded[0]).all() and np.array_equal(decoded[0].numpy(), image)
        index = json.loads((tmp_path / "out" / split / f"{split}-index.json").read_text())
        assert index["num_samples"] == len(images) and index["classes"] == list(fm.CLASSES)
        # the folder is one shard set the evaluation reads, every sample with its count known
        assert build_eval_dataset([out[f"{split}_folder"]], None).num_samples == len(images)
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == [
        "train-000000.tar.gz",
        "train-000001.tar.gz",
        "train-000002.tar.gz",
        "train-index.json",
    ]


def test_prepare_is_deterministic_and_idempotent(tmp_path):
    source = write_idx_set(tmp_path / "idx", synthetic_splits(train=12, val=5))
    fm.prepare_fashion_mnist(tmp_path / "a", shard_size=5, directory=source)
    fm.prepare_fashion_mnist(tmp_path / "b", shard_size=5, directory=source)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    stamp = (tmp_path / "a" / "fashion_mnist.json").stat().st_mtime_ns
    fm.prepare_fashion_mnist(tmp_path / "a", shard_size=5, directory=source)
    assert (tmp_path / "a" / "fashion_mnist.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_an_interrupted_build_is_redone_without_touching_other_files(tmp_path):
    source = write_idx_set(tmp_path / "idx", synthetic_splits(train=12, val=5))
    train = tmp_path / "out" / "train"
    train.mkdir(parents=True)
    (train / "train-000007.tar.gz").write_bytes(b"left by an earlier, interrupted build")
    (train / "notes.txt").write_text("the user's")
    fm.prepare_fashion_mnist(tmp_path / "out", shard_size=5, directory=source)
    assert sorted(p.name for p in train.iterdir()) == [
        "notes.txt",
        "train-000000.tar.gz",
        "train-000001.tar.gz",
        "train-000002.tar.gz",
        "train-index.json",
    ]


def test_index_counts_of_gzipd_shards_are_trusted(tmp_path, caplog):
    # 3000 blank images compress to a few bytes each: fewer 512-byte blocks than samples on disk, yet a
    # possible count once decompressed, so resume arithmetic may use it (the shard is not read to count)
    blank = {s: (np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.uint8)) for s, n in (("train", 3000), ("val", 1))}
    out = fm.prepare_fashion_mnist(tmp_path / "out", shard_size=3000, directory=write_idx_set(tmp_path / "idx", blank))
    shard = Path(out["train_folder"]) / "train-000000.tar.gz"
    assert shard.stat().st_size // 512 < 3000
    with caplog.at_level("WARNING"):
        units = resolve_source([out["train_folder"]])
    assert [u.num_samples for u in units] == [3000] and "not trusted" not in caplog.text


@pytest.mark.parametrize(
    "images_file, message",
    [
        (idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=b"\0\0\x08\x01"), "magic 00000801, expected 00000803"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "only 1,567 of the 1,568 bytes"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\0", "more than the 1,568 bytes"),
        (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:9], "IDX header is cut short"),
        (idx_bytes(np.zeros((2, 32, 32), np.uint8)), "32x32 images, expected 28x28"),
        (idx_bytes(np.zeros((3, 28, 28), np.uint8)), "holds 3 images but .* 2 labels"),
    ],
    ids=["magic", "short", "long", "header", "size", "count"],
)
def test_bad_idx_files_are_refused_by_name(tmp_path, images_file, message):
    source = write_idx_set(tmp_path / "idx", synthetic_splits(train=2, val=2))
    (source / fm.SPLIT_FILES["train"][0]).write_bytes(gzip.compress(images_file))
    with pytest.raises(fm.IDXFormatError, match=message) as caught:
        fm.load_split("train", source)
    assert "train-images-idx3-ubyte.gz" in str(caught.value)


def test_labels_outside_the_ten_classes_are_refused(tmp_path):
    splits = synthetic_splits(train=4, val=1)
    splits["train"] = (splits["train"][0], np.array([0, 9, 10, 1], np.uint8))
    source = write_idx_set(tmp_path / "idx", splits)
    with pytest.raises(fm.IDXFormatError, match="train-labels-idx1-ubyte.gz'?: label 10 is outside 0-9"):
        fm.load_split("train", source)


def test_damaged_and_uncompressed_files_are_refused(tmp_path):
    path = tmp_path / "x-ubyte.gz"
    data = bytearray(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8))))
    data[-6] ^= 0xFF  # inside the CRC32 of the trailer
    path.write_bytes(bytes(data))
    with pytest.raises(fm.IDXFormatError, match="damaged gzip data"):
        fm.read_idx(path, 1)
    path.write_bytes(idx_bytes(np.arange(100, dtype=np.uint8)))
    with pytest.raises(fm.IDXFormatError, match="is not gzip data"):
        fm.read_idx(path, 1)
    path.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8))) + b"more")
    with pytest.raises(fm.IDXFormatError, match="followed by other data"):
        fm.read_idx(path, 1)


def test_idx_budget_refuses_a_large_declared_size_before_decompressing(tmp_path, monkeypatch):
    path = tmp_path / "big-ubyte.gz"
    # A header declaring 1,000 x 1,000 x 1,000 bytes over a few bytes of data: refused on the header.
    path.write_bytes(gzip.compress(bytes((0, 0, 8, 3)) + (1000).to_bytes(4, "big") * 3))
    with pytest.raises(InputTooLargeError, match=r"declares \(1000, 1000, 1000\).*MAX_IDX_BYTES"):
        fm.read_idx(path, 3)
    monkeypatch.setattr(fm, "MAX_IDX_BYTES", 100)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(200, np.uint8))))
    with pytest.raises(InputTooLargeError, match="above the limit of 100 bytes"):
        fm.read_idx(path, 1)


# ------------------------------------------------------------------------------------------------
# With the Debian package: the standard split, image for image
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_build(tmp_path_factory) -> dict:
    return fm.prepare_fashion_mnist(tmp_path_factory.mktemp("fashion") / "data")


@needs_package
@pytest.mark.slow
def test_standard_split_matches_the_idx_files(full_build):
    for split, expected in (("train", 60_000), ("val", 10_000)):
        images, labels = read_debian(split)
        samples = _raw_samples(full_build[split])
        assert len(samples) == expected == len(labels)
        assert [sample_label(s) for s in samples] == labels.tolist()
        assert np.bincount(labels).tolist() == [expected // 10] * 10  # the set is balanced
        for position in (0, 1, 777, expected // 2, expected - 1):
            decoded = decode_image(image_bytes(samples[position]))
            assert np.array_equal(decoded[1].numpy(), images[position]), (split, position)
        index = json.loads((Path(full_build[f"{split}_folder"]) / f"{split}-index.json").read_text())
        assert index["num_samples"] == expected and len(index["shards"]) == expected // fm.SHARD_SIZE
    marker = json.loads((Path(full_build["train_folder"]).parent / "fashion_mnist.json").read_text())
    assert marker == {"source": str(fm.DEBIAN_DIR), "shard_size": fm.SHARD_SIZE, "train": 60_000, "val": 10_000}


@needs_package
@pytest.mark.slow
def test_real_split_is_written_byte_for_byte_the_same_twice(tmp_path):
    images, labels = fm.load_split("val")
    a = fm.write_split(images, labels, tmp_path / "a", "val", 2500, "x")
    fm.write_split(images, labels, tmp_path / "b", "val", 2500, "x")
    assert a["num_samples"] == 10_000 and _digest(tmp_path / "a") == _digest(tmp_path / "b")
