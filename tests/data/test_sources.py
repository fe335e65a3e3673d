"""Data sources: patterns, shard folders and image folders resolve to read units; shards read back as raw
samples; every error names the pattern, folder or shard at fault. (The loader over these units:
tests/data/test_loader.py; hostile shards: test_hostile_data.py.)"""

from __future__ import annotations

import io
import tarfile

import pytest

from dinolite.data.sources import DamagedShardError, SourceError, brace_expand, read_unit, resolve_source


def _shard(path, n: int):
    with tarfile.open(path, "w") as archive:
        for i in range(n):
            for ext, data in (("jpg", f"image {i}".encode()), ("cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_braces_expand_lists_and_padded_ranges_left_to_right():
    assert brace_expand("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert brace_expand("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert brace_expand("plain.tar") == ["plain.tar"]
    with pytest.raises(SourceError, match=r"brace range \{5..3\} in 'x-\{5..3\}.tar' goes downwards"):
        brace_expand("x-{5..3}.tar")


def test_patterns_and_shard_folders_give_one_unit_per_shard(tmp_path):
    for i in range(3):
        _shard(tmp_path / f"s-{i:06d}.tar", 2)
    by_range = resolve_source(str(tmp_path / "s-{000000..000001}.tar"))
    assert [u.url for u in by_range] == [str(tmp_path / f"s-{i:06d}.tar") for i in range(2)]
    assert all(u.is_shard for u in by_range)
    assert len(resolve_source([str(tmp_path)])) == 3
    assert [u.url for u in resolve_source("pipe:cat {a,b}.tar")] == ["pipe:cat a.tar", "pipe:cat b.tar"]


def test_an_image_folder_gives_one_labelled_unit_per_image(tmp_path):
    for name in ("cat/1.png", "dog/2.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"bytes of " + name.encode())
    units = resolve_source(str(tmp_path))
    assert [(u.key, u.label, u.num_samples) for u in units] == [("cat/1.png", 0, 1), ("dog/2.jpg", 1, 1)]
    sample = next(read_unit(units[1]))
    assert sample["jpg"] == b"bytes of dog/2.jpg" and sample["cls"] == b"1"


def test_sources_that_give_nothing_are_named(tmp_path):
    with pytest.raises(SourceError, match="data source is empty"):
        resolve_source([])
    with pytest.raises(SourceError, match=r"data source pattern '.*none-\*.tar' matches no file"):
        resolve_source(str(tmp_path / "none-*.tar"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no shards .* and no images .*it holds 1 entry: notes.txt"):
        resolve_source(str(tmp_path))
    with pytest.raises(SourceError, match=r"'.*notes.txt' \(from '.*notes.txt'\) is not a shard file"):
        resolve_source(str(tmp_path / "notes.txt"))


def test_a_shard_reads_back_its_samples_and_a_cut_one_names_what_was_lost(tmp_path):
    path = _shard(tmp_path / "s-000000.tar", 4)
    samples = list(read_unit(resolve_source(str(path))[0]))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002", "000003"]
    assert samples[2]["jpg"] == b"image 2" and samples[2]["cls"] == b"2"
    data = path.read_bytes()
    path.write_bytes(data[: 512 * 6 + 100])  # inside the fourth member's header or data
    read: list[dict] = []
    with pytest.raises(DamagedShardError, match=f"shard '{path}' is damaged after \\d samples"):
        for sample in read_unit(resolve_source(str(path))[0]):
            read.append(sample)
    assert 1 <= len(read) < 4 and read[0]["jpg"] == b"image 0"  # the samples before the damage came through
