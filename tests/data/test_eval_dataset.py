"""The once-through evaluation dataset: every sample exactly once, in source order, split over ranks and
workers by index; an unusable image is skipped and logged, a bad label stops."""

from __future__ import annotations

import io
import logging
import tarfile

import pytest
import torch
from PIL import Image

from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.samples import LabelError


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color=(value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    for i in range(7):
        path = tmp_path / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_png(10 * i))
    return tmp_path


def test_every_sample_once_in_source_order_with_its_label(folder):
    items = list(build_eval_dataset(str(folder), transform=None))
    assert [index for _, _, index in items] == list(range(7))
    assert [label for _, label, _ in items] == [0, 0, 0, 0, 1, 1, 1]  # class0 (0, 2, 4, 6) then class1
    assert all(isinstance(image, torch.Tensor) and image.shape == (3, 4, 4) for image, _, _ in items)


def test_ranks_split_the_samples_by_index_without_overlap(folder):
    dataset = build_eval_dataset(str(folder), transform=None, rank=0, world_size=1)
    assert dataset.num_samples == 7
    split = [[index for _, _, index in build_eval_dataset(str(folder), None, r, 3)] for r in range(3)]
    assert split == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="rank 3 is outside world_size 3"):
        build_eval_dataset(str(folder), None, rank=3, world_size=3)


def test_the_transform_is_applied_to_each_image(folder):
    items = list(build_eval_dataset(str(folder), transform=lambda image: image.float().mean().item()))
    assert [round(value) for value, _, _ in items[:2]] == [0, 20]  # images 0.png and 2.png


def test_an_undecodable_image_is_skipped_and_logged(folder, caplog):
    (folder / "class0" / "2.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="dinolite.data.eval_dataset"):
        indices = [index for _, _, index in build_eval_dataset(str(folder), transform=None)]
    assert indices == [0, 2, 3, 4, 5, 6]  # the index is the position in the source: 1 is missing
    assert "2.png" in caplog.text


def test_a_label_that_is_not_a_class_index_stops(tmp_path):
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("0.png", _png(0)), ("0.cls", b"cat")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(LabelError, match="holds 'cat'"):
        list(build_eval_dataset(str(shard), transform=None))
