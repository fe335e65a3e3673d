"""Bad data never stops training silently nor for good (issue 16, items 4, 6, 7, 8).

Shards are written here, member by member, with the damage the issue describes: a valid 16-bit PNG,
a decompression bomb, samples that break the augmentation, half-corrupt shards, and tars cut at a
header boundary, inside a header, inside a member and inside a gzip stream.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.collate import collate_data_and_cast
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.loader import LoaderOptions, build_train_loader
from dinolite.data.masking import MaskingGenerator
from dinolite.data.skip_window import SkippedSampleWindow, TooManySkippedSamplesError
from dinolite.data.sources import DamagedShardError, read_tar, resolve_source
from dinolite.data.train_stream import slot_stream
from tests.data.test_decode import bomb_png


def png(value: int, size: tuple[int, int] = (20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, (3 * value) % 256)).save(buf, "PNG")
    return buf.getvalue()


def png16(size: tuple[int, int] = (20, 16)) -> bytes:
    ramp = np.linspace(0, 65535, size[0] * size[1]).astype("<u2").reshape(size[1], size[0])
    buf = io.BytesIO()
    Image.frombytes("I;16", size, ramp.tobytes()).save(buf, "PNG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[tuple[str, bytes]], compress: bool = False) -> Path:
    """``samples`` = [(key, png bytes)], each stored as KEY.png and KEY.cls."""
    with tarfile.open(path, "w:gz" if compress else "w") as archive:
        for key, image in samples:
            for name, data in ((f"{key}.png", image), (f"{key}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def collate():
    return partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        n_tokens=16,
        mask_generator=MaskingGenerator((4, 4)),
    )


def augment():
    return MultiCropAugmentation(16, 8, 2, (0.3, 1.0), (0.1, 0.3))


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same_batches(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("collated_global_crops", "collated_local_crops"))


# ------------------------------------------------------------------ item 4: one skip-and-count path


def test_16_bit_png_trains_and_resume_rebuilds_the_same_batch(tmp_path):
    """The issue's failure: one valid 16-bit PNG raised 'expected a uint8 tensor ... got torch.uint16' in a
    worker, for good (a resume replayed the same batch)."""
    shard = write_shard(tmp_path / "s.tar", [(f"k{i}", png16() if i == 2 else png(10 * i)) for i in range(8)])
    make = partial(build_train_loader, [str(shard)], augment(), collate(), LoaderOptions(batch_size=4))
    batches = take(make(), 3)
    assert [b["skipped_samples"] for b in batches] == [0, 0, 0]
    resumed = take(make(start_batch=0), 1)  # the batch holding the 16-bit PNG, built again
    assert same_batches(batches[:1], resumed)


class FailsOnWidth:
    """An augmentation that raises for images of one width (as a transform bug on odd inputs would)."""

    def __init__(self, width: int) -> None:
        self.inner = augment()
        self.width = width

    def __call__(self, image, generator=None):
        if image.shape[-1] == self.width:
            raise RuntimeError(f"cannot augment an image of width {self.width}")
        return self.inner(image, generator=generator)


def test_every_per_sample_failure_is_skipped_counted_and_named(tmp_path, caplog):
    samples = [(f"k{i}", png(10 * i)) for i in range(12)]
    samples[1] = ("undecodable", b"\x89PNG\r\n\x1a\n garbage")
    samples[5] = ("bomb", bomb_png(3000))  # above the limit set below
    samples[9] = ("odd_width", png(90, size=(21, 16)))  # the augmentation raises on it
    shard = write_shard(tmp_path / "bad.tar", samples)
    make = partial(
        build_train_loader, [str(shard)], FailsOnWidth(21), collate(), LoaderOptions(4, max_image_pixels=1_000_000)
    )
    with caplog.at_level(logging.WARNING, logger="dinolite.data.loader"):
        batches = take(make(), 3)
    assert [b["skipped_samples"] for b in batches] == [1, 1, 1]
    assert [b["collated_global_crops"].shape[0] for b in batches] == [8, 8, 8]
    log = caplog.text
    for key, reason in (
        ("undecodable", "ValueError"),
        ("bomb", "3000x3000 = 9,000,000 pixels"),
        ("odd_width", "cannot augment"),
    ):
        assert f"bad.tar key '{key}'" in log and reason in log
    # A resume that starts on each of these batches builds them again, identically.
    for start in range(3):
        assert same_batches(batches[start : start + 1], take(make(start_batch=start), 1))


def test_a_skipped_position_takes_the_next_good_image_with_its_own_randomness(tmp_path):
    good = [(f"k{i}", png(20 * i)) for i in range(4)]
    clean = write_shard(tmp_path / "clean.tar", good)
    broken = write_shard(tmp_path / "broken.tar", [good[0], ("x", b"junk"), good[2], good[3]])
    (a,) = take(build_train_loader([str(clean)], augment(), collate(), LoaderOptions(batch_size=4)), 1)
    (b,) = take(build_train_loader([str(broken)], augment(), collate(), LoaderOptions(batch_size=4)), 1)
    assert b["skipped_samples"] == 1
    crops_a, crops_b = a["collated_global_crops"], b["collated_global_crops"]  # (2B, ...), crop-major
    for pos in (0, 2, 3):  # untouched positions: same image, same generator -> same crops
        assert torch.equal(crops_a[pos], crops_b[pos]) and torch.equal(crops_a[4 + pos], crops_b[4 + pos])
    assert not torch.equal(crops_b[1], crops_b[2])  # the donor (position 2) recropped with position 1's generator


def test_a_batch_with_no_usable_sample_names_the_failure(tmp_path):
    shard = write_shard(tmp_path / "junk.tar", [(f"k{i}", b"junk") for i in range(4)])
    with pytest.raises(ValueError, match=r"no sample of batch 0 could be used .*junk.tar key 'k0'"):
        take(
            build_train_loader([str(shard)], augment(), collate(), LoaderOptions(batch_size=4, max_skip_fraction=1.0)),
            1,
        )


# ------------------------------------------------------------------ item 6: the skipped-sample window


def test_window_counts_against_its_full_size_and_forgets_old_samples():
    window = SkippedSampleWindow(max_fraction=0.1, size=20, where="worker 0")
    for i in range(2):  # 2 bad = 0.1 * 20: allowed
        window.add(True, f"s.tar key {i}")
    for _ in range(18):
        window.add(False)
    window.add(False)  # the first bad sample leaves the window
    assert window.skipped == 1
    window.add(False)
    assert window.skipped == 0
    window.add(True, "s.tar key 2")
    window.add(True, "s.tar key 3")
    with pytest.raises(TooManySkippedSamplesError) as info:
        window.add(True, "s.tar key 4")  # 3 of the last 20
    message = str(info.value)
    assert "3 of the last 20 samples read by worker 0" in message
    assert "data.decode_errors_max_fraction=0.1" in message and "data.decode_errors_window=20" in message
    assert "s.tar key 4" in message and "s.tar key 2" in message and "key 1" not in message
    float_edge = SkippedSampleWindow(0.29, 100, "w")  # 0.29 * 100 == 28.999999999999996 in floats
    for i in range(29):
        float_edge.add(True, str(i))
    with pytest.raises(TooManySkippedSamplesError, match="30 of the last 30"):
        float_edge.add(True, "30")
    zero = SkippedSampleWindow(0.0, 5, "w")
    with pytest.raises(TooManySkippedSamplesError):
        zero.add(True, "first")
    never = SkippedSampleWindow(1.0, 5, "w")
    for _ in range(50):
        never.add(True, "x")


def test_half_corrupt_source_stops_with_fraction_window_and_examples(tmp_path):
    """The issue's failure: at 50% corrupt samples the run trained silently on duplicates."""
    samples = [(f"k{i}", b"junk" if i % 2 else png(i)) for i in range(200)]
    shard = write_shard(tmp_path / "half.tar", samples)
    loader = build_train_loader(
        [str(shard)], augment(), collate(), LoaderOptions(batch_size=8, max_skip_fraction=0.05, skip_window=100)
    )
    with pytest.raises(TooManySkippedSamplesError) as info:
        take(loader, 25)
    message = str(info.value)
    assert "6 of the last" in message  # stops at the 6th bad sample: 6 > 0.05 * 100
    assert "data.decode_errors_max_fraction=0.05" in message and "window of data.decode_errors_window=100" in message
    assert "half.tar key 'k" in message


def test_scattered_bad_samples_below_the_fraction_never_stop(tmp_path):
    samples = [(f"k{i}", b"junk" if i % 25 == 0 else png(i % 256)) for i in range(200)]  # 4%
    shard = write_shard(tmp_path / "scattered.tar", samples)
    loader = build_train_loader(
        [str(shard)], augment(), collate(), LoaderOptions(batch_size=8, max_skip_fraction=0.05, skip_window=100)
    )
    assert sum(b["skipped_samples"] for b in take(loader, 50)) == 16  # two epochs, 8 bad each


def test_window_is_enforced_inside_dataloader_workers(tmp_path):
    samples = [(f"k{i}", b"junk" if i % 2 else png(i)) for i in range(64)]
    shard = write_shard(tmp_path / "half.tar", samples)
    loader = build_train_loader(
        [str(shard)], augment(), collate(), LoaderOptions(4, num_workers=1, max_skip_fraction=0.05, skip_window=40)
    )
    with pytest.raises(TooManySkippedSamplesError) as info:
        take(loader, 16)
    # One readable message (the worker's traceback stripped), as the CLI's one-line error: prints it.
    assert str(info.value).startswith("3 of the last ") and "read by data worker 0 of rank 0" in str(info.value)
    assert "\n" not in str(info.value) and str(info.value).endswith("(raised in a DataLoader worker)")


# ------------------------------------------------------------------ item 8: damaged shards


def member_offsets(path: Path) -> list[int]:
    with tarfile.open(path) as archive:
        return [m.offset for m in archive.getmembers()]


def cut_copies(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A whole 6-sample shard (with an index JSON as make_shards writes) and copies cut in every way."""
    whole = write_shard(tmp_path / "whole.tar", [(f"k{i}", png(30 * i)) for i in range(6)])
    data = whole.read_bytes()
    offsets = member_offsets(whole)  # headers: k0.png k0.cls k1.png k1.cls ...
    cuts = {
        "at_header_boundary": data[: offsets[6]],  # right before k3.png's header: no end-of-archive marker
        "inside_header": data[: offsets[6] + 100],
        "inside_member": data[: offsets[6] + 512 + 40],  # in k3.png's data
    }
    out = {}
    for name, payload in cuts.items():
        (tmp_path / f"{name}.tar").write_bytes(payload)
        out[name] = tmp_path / f"{name}.tar"
    gz = gzip.compress(data)
    (tmp_path / "gz_cut.tar.gz").write_bytes(gz[: len(gz) // 2])
    out["gz_cut"] = tmp_path / "gz_cut.tar.gz"
    # As make_shards writes it: each shard's count and byte size when it was complete.
    index = {"shards": [{"name": p.name, "samples": 6, "bytes": len(data)} for p in [whole, *out.values()]]}
    (tmp_path / "shards-index.json").write_text(json.dumps(index))
    return whole, out


def test_whole_shard_reports_no_damage(tmp_path):
    whole, _ = cut_copies(tmp_path)
    assert [s["__key__"] for s in read_tar(str(whole), 6)] == [f"k{i}" for i in range(6)]
    gz = write_shard(tmp_path / "whole.tar.gz", [(f"k{i}", png(i)) for i in range(3)], compress=True)
    assert len(list(read_tar(str(gz)))) == 3


@pytest.mark.parametrize("cut", ["at_header_boundary", "inside_header", "inside_member"])
def test_cut_shard_yields_what_was_read_then_names_the_loss(tmp_path, cut):
    """The issue's failure: a tar cut at a header boundary silently lost the rest of the shard."""
    _, cuts = cut_copies(tmp_path)
    got = []
    with pytest.raises(DamagedShardError) as info:
        for sample in read_tar(str(cuts[cut]), expected_samples=6):
            got.append(sample)
    assert [s["__key__"] for s in got] == ["k0", "k1", "k2"]  # k3's image was never read whole
    assert all("png" in s and "cls" in s for s in got)
    message = str(info.value)
    assert f"{cut}.tar" in message and "after 3 samples" in message and "3 of its 6 samples" in message
    reason = {
        "at_header_boundary": "without an end-of-archive marker",
        "inside_header": "inside the member header",
        "inside_member": "unexpected end of data",
    }[cut]
    assert reason in message


def test_cut_or_failing_pipe_commands_are_reported(tmp_path):
    _, cuts = cut_copies(tmp_path)
    with pytest.raises(DamagedShardError, match=r"'pipe:cat .*at_header_boundary.tar' is damaged after 3 samples"):
        list(read_tar(f"pipe:cat {cuts['at_header_boundary']}"))
    with pytest.raises(DamagedShardError, match=r"after 0 samples: .*empty file; the command exited with status 3"):
        list(read_tar("pipe:exit 3"))


def test_cut_gzip_shard_is_reported(tmp_path):
    _, cuts = cut_copies(tmp_path)
    with pytest.raises(DamagedShardError, match=r"gz_cut.tar.gz.* is damaged after \d samples"):
        list(read_tar(str(cuts["gz_cut"]), expected_samples=6))


def test_damaged_shards_are_counted_in_batches_and_training_goes_on(tmp_path, caplog):
    whole, cuts = cut_copies(tmp_path)
    source = [str(whole), str(cuts["at_header_boundary"]), str(cuts["inside_member"])]
    with caplog.at_level(logging.WARNING):
        units = resolve_source(source)
    # The index's byte sizes unmask the cut copies: their counts are not trusted (they get read).
    assert [u.num_samples for u in units] == [6, None, None] and [u.listed_samples for u in units] == [6, 6, 6]
    assert "at_header_boundary.tar' is 6144 bytes but its index JSON says" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dinolite.data.train_stream"):
        stream = list(slot_stream(units, 0, 0, 1, 0, epochs=1))
    assert len(stream) == 6 + 3 + 3
    assert caplog.text.count("is damaged after 3 samples") == 2 and "3 of its 6 samples" in caplog.text
    batches = take(build_train_loader(source, augment(), collate(), LoaderOptions(batch_size=4)), 9)  # 3 epochs of 12
    # A damage is counted in the batch being filled when the reader reaches it (for the last shard of an
    # epoch, that is when the next epoch's first sample is asked for): 2 per epoch, 6 in the first 9 batches
    # unless the last read of batch 9 is a cut shard's end.
    assert sum(b["damaged_shards"] for b in batches) in (5, 6)
    assert all(b["skipped_samples"] == 0 for b in batches)


def test_resume_is_exact_across_damaged_shards(tmp_path):
    whole, cuts = cut_copies(tmp_path)
    source = [str(whole), str(cuts["at_header_boundary"]), str(cuts["inside_member"])]
    make = partial(build_train_loader, source, augment(), collate(), LoaderOptions(4, seed=3, shuffle_buffer=5))
    uninterrupted = take(make(), 10)
    for start in (3, 7):
        resumed = take(make(start_batch=start), 10 - start)
        assert same_batches(uninterrupted[start:], resumed)
        # damage met while fast-forwarding was already reported before the resume point: not twice
        assert [b["damaged_shards"] for b in resumed] == [b["damaged_shards"] for b in uninterrupted[start:]]


def test_every_slot_reading_every_shard_reports_a_damaged_shard_once(tmp_path):
    _, cuts = cut_copies(tmp_path)
    units = resolve_source([str(cuts["inside_header"])])
    damage_per_slot = []
    for slot in range(4):  # more slots than shards: each slot reads the shard, keeps every 4th sample
        damage: list[str] = []
        list(slot_stream(units, 0, slot, 4, 0, epochs=1, damage=damage))
        damage_per_slot.append(len(damage))
    assert sum(damage_per_slot) == 1


def test_eval_dataset_uses_the_samples_before_the_damage(tmp_path, caplog):
    whole, cuts = cut_copies(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dinolite.data.eval_dataset"):
        items = list(build_eval_dataset([str(cuts["at_header_boundary"]), str(whole)], None))
    assert [index for _, _, index in items] == list(range(9))
    assert "at_header_boundary.tar" in caplog.text and "3 of its 6 samples" in caplog.text
