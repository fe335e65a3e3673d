import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinolite.commands import shards as shards_command
from dinolite.data import make_shards as ms
from dinolite.data import shard_writer
from dinolite.data.sources import read_tar
from tests.data.conftest import N_CLASSES, PER_CLASS
from tests.data.test_decode import bomb_png


def _all_samples(out: Path) -> list[dict]:
    return [s for shard in sorted(out.glob("shard-*.tar")) for s in read_tar(str(shard))]


def test_round_trip_is_byte_identical_with_labels(image_folder, shard_dir):
    index = json.loads((shard_dir / "shard-index.json").read_text())
    assert index["num_samples"] == N_CLASSES * PER_CLASS
    assert [s["samples"] for s in index["shards"]] == [4] * 6
    assert index["classes"] == [f"class_{c}" for c in range(N_CLASSES)]
    samples = _all_samples(shard_dir)
    assert len({s["__key__"] for s in samples}) == len(samples) == N_CLASSES * PER_CLASS
    for sample in samples:
        meta = json.loads(sample["json"])
        original = (image_folder / meta["path"]).read_bytes()
        ext = "png" if meta["path"].endswith(".png") else "jpg"
        assert sample[ext] == original
        assert int(sample["cls"]) == index["classes"].index(meta["class"]) == int(meta["path"].split("_")[1][0])
    assert not list(shard_dir.glob(".*"))  # no temp files left


def test_bad_files_are_skipped_and_reported(image_folder, tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    good = next(image_folder.glob("class_0/*.jpg"))
    (src / "a" / "good.jpg").write_bytes(good.read_bytes())
    (src / "a" / "broken.jpg").write_bytes(good.read_bytes()[:200])  # truncated
    (src / "a" / "text.png").write_bytes(b"not an image")
    (src / "a" / "notes.txt").write_text("ignored: not an image extension")
    assert shards_command.main([str(src), str(tmp_path / "out"), "--shard-size", "2"]) == 0
    index = json.loads((tmp_path / "out" / "shard-index.json").read_text())
    assert index["num_samples"] == 1
    assert index["skipped"]["count"] == 2
    assert any("broken.jpg" in p for p in index["skipped"]["first"])
    assert "skipped 2 unreadable files" in capsys.readouterr().out


def test_list_file_source_and_max_side(image_folder, tmp_path):
    files = sorted(image_folder.glob("class_1/*"))[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f}\tcat{i % 2}\n" for i, f in enumerate(files)))
    index = ms.make_shards(listing, tmp_path / "out", shard_size=10, max_side=20, progress=False)
    assert index["classes"] == ["cat0", "cat1"]
    samples = _all_samples(tmp_path / "out")
    for sample, i in zip(samples, range(3)):
        data = sample.get("jpg") or sample.get("png")
        assert max(Image.open(io.BytesIO(data)).size) == 20
        assert int(sample["cls"]) == i % 2


def test_existing_shards_need_overwrite(image_folder, shard_dir):
    with pytest.raises(FileExistsError, match="overwrite"):
        ms.make_shards(image_folder, shard_dir, progress=False)


def test_interrupted_run_leaves_no_partial_shard_under_final_name(image_folder, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_add = shard_writer._add_member

    def failing_add(archive, name, data):
        calls["n"] += 1
        if calls["n"] == 3 * 6 + 2:  # 3 members per sample: dies inside the second shard of 4
            raise KeyboardInterrupt
        real_add(archive, name, data)

    monkeypatch.setattr(shard_writer, "_add_member", failing_add)
    with pytest.raises(KeyboardInterrupt):
        ms.make_shards(image_folder, tmp_path, shard_size=4, progress=False)
    finals = sorted(tmp_path.glob("shard-*.tar"))
    assert [p.name for p in finals] == ["shard-000000.tar"]
    with tarfile.open(finals[0]) as archive:
        assert len(archive.getnames()) == 4 * 3
    assert not (tmp_path / "shard-index.json").exists()


def test_workers_give_identical_shards(image_folder, shard_dir, tmp_path):
    ms.make_shards(image_folder, tmp_path, shard_size=4, workers=2, progress=False)
    for shard in sorted(shard_dir.glob("shard-*.tar")):
        assert (tmp_path / shard.name).read_bytes() == shard.read_bytes()


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ms.make_shards(tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_bombs_are_skipped_undecoded_and_16_bit_images_shrink_scaled(tmp_path):
    """make_shards --max-side re-encodes: a 16-bit PNG must keep its values (Pillow's convert('RGB')
    clipped them to white), and a decompression bomb is skipped from its header."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 64).astype("<u2"), (48, 1))  # 64x48, dark to bright
    Image.frombytes("I;16", (64, 48), ramp.tobytes()).save(src / "a" / "deep.png")
    (src / "a" / "bomb.png").write_bytes(bomb_png())
    index = ms.make_shards(src, tmp_path / "out", shard_size=10, max_side=32, progress=False)
    assert index["num_samples"] == 1 and index["skipped"]["count"] == 1
    assert "bomb.png: ImageTooLargeError: image of 20000x20000" in index["skipped"]["first"][0]
    # Each shard's size is indexed, so a shard cut later is recognised (and read, not skipped by count).
    assert [s["bytes"] for s in index["shards"]] == [
        (tmp_path / "out" / s["name"]).stat().st_size for s in index["shards"]
    ]
    (sample,) = [s for shard in sorted((tmp_path / "out").glob("shard-*.tar")) for s in read_tar(str(shard))]
    shrunk = np.asarray(Image.open(io.BytesIO(sample["png"])))
    assert shrunk.shape == (24, 32, 3)
    row = shrunk[12, :, 0].astype(int)
    assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row) >= 0)
    assert 100 < row[16] < 160  # mid-grey in the middle: a ramp, not the white a clipping conversion gives
