"""The shards are webdataset's format in both directions: webdataset reads ours, we read webdataset's."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from dinolite.data.eval_dataset import build_eval_dataset
from tests.data.conftest import N_CLASSES, PER_CLASS

wds = pytest.importorskip("webdataset")


def test_webdataset_reads_our_shards_byte_identical(shard_dir, image_folder):
    originals = {p.read_bytes() for p in image_folder.rglob("*") if p.is_file()}
    urls = sorted(str(p) for p in shard_dir.glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == N_CLASSES * PER_CLASS
    assert len({s["__key__"] for s in samples}) == len(samples)
    for sample in samples:
        image_bytes = sample.get("jpg") or sample.get("png")
        assert image_bytes in originals
        assert 0 <= int(sample["cls"]) < N_CLASSES


def test_we_read_shards_written_by_webdataset(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    with wds.TarWriter(str(tmp_path / "theirs-000000.tar")) as sink:
        for i in range(6):
            buffer = io.BytesIO()
            Image.new("RGB", (20, 12), colours[i % 3]).save(buffer, "PNG")
            sink.write({"__key__": f"sample{i:03d}", "png": buffer.getvalue(), "cls": i % 3})

    def to_tensor(image):
        return image if isinstance(image, torch.Tensor) else torch.from_numpy(__import__("numpy").asarray(image))

    items = list(build_eval_dataset([str(tmp_path / "theirs-{000000..000000}.tar")], to_tensor))
    assert sorted(index for _, _, index in items) == list(range(6))
    for image, label, _ in items:
        pixels = image.reshape(3, -1) if image.shape[0] == 3 else image.reshape(-1, 3).t()
        assert label in (0, 1, 2)
        assert int(pixels[label].float().mean()) == 255  # the colour channel of its class
