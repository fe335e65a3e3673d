"""ShardWriter: samples in, complete shards of ``shard_size`` samples out under their final names only
when complete, byte-reproducible (also gzip'd), and an index written last that counts them."""

from __future__ import annotations

import hashlib
import json
import tarfile

from dinolite.data.shard_writer import INDEX_FORMAT, ShardWriter, write_shard_index


def _write(out, n: int, shard_size: int, compress: bool = False) -> ShardWriter:
    writer = ShardWriter(out, "train", shard_size, compress=compress)
    for i in range(n):
        writer.write(f"{i:04d}", {"png": bytes([i]) * (i + 1), "cls": str(i % 3).encode()})
    writer.close()
    return writer


def test_samples_are_split_into_shards_of_the_given_size(tmp_path):
    writer = _write(tmp_path, n=7, shard_size=3)
    assert [s["name"] for s in writer.shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [s["samples"] for s in writer.shards] == [3, 3, 1] and writer.num_written == 7
    with tarfile.open(tmp_path / "train-000001.tar") as archive:
        assert archive.getnames() == ["0003.png", "0003.cls", "0004.png", "0004.cls", "0005.png", "0005.cls"]
        assert archive.extractfile("0004.png").read() == bytes([4]) * 5
    assert all(s["bytes"] == (tmp_path / s["name"]).stat().st_size for s in writer.shards)


def test_an_open_shard_has_no_final_name_until_it_is_complete(tmp_path):
    writer = ShardWriter(tmp_path, "train", 2)
    writer.write("a", {"cls": b"0"})
    assert not (tmp_path / "train-000000.tar").exists()  # a reader never sees half a shard
    assert [p.name for p in tmp_path.iterdir()] == [".train-000000.tar.tmp"]
    writer.write("b", {"cls": b"1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    writer.close()  # nothing open: closing again writes nothing
    assert len(writer.shards) == 1


def test_the_same_samples_give_the_same_bytes_plain_and_gzipd(tmp_path):
    digests = []
    for run in ("a", "b"):
        for compress in (False, True):
            out = tmp_path / f"{run}{compress}"
            out.mkdir()
            writer = _write(out, n=5, shard_size=5, compress=compress)
            digests.append(hashlib.sha256((out / writer.shards[0]["name"]).read_bytes()).hexdigest())
    assert digests[0] == digests[2] and digests[1] == digests[3] and digests[0] != digests[1]
    with tarfile.open(tmp_path / "aTrue" / "train-000000.tar.gz", "r:gz") as archive:
        assert len(archive.getnames()) == 10


def test_the_index_counts_the_shards_and_names_the_classes(tmp_path):
    writer = _write(tmp_path, n=4, shard_size=3)
    skipped = [(f"img{i}.png", "not an image") for i in range(12)]
    index = write_shard_index(writer, "/images", ["a", "b", "c"], skipped)
    assert json.loads((tmp_path / "train-index.json").read_text()) == index
    assert index["format"] == INDEX_FORMAT and index["num_samples"] == 4 and index["prefix"] == "train"
    assert index["classes"] == ["a", "b", "c"] and index["shards"] == writer.shards
    assert index["skipped"]["count"] == 12 and len(index["skipped"]["first"]) == 10
    assert index["skipped"]["first"][0] == "img0.png: not an image"
