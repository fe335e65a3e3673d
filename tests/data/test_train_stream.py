"""The training stream: per-slot shards or samples, reshuffled each epoch from the seed alone, every sample
once per epoch over the slots, a resume that skips exactly what was consumed, and a bounded shuffle buffer."""

from __future__ import annotations

import io
import itertools
import tarfile

import pytest
import torch

from dinolite.data.sources import SourceError, resolve_source
from dinolite.data.train_stream import derive_seed, shuffled, slot_stream


def _shards(folder, n_shards: int, per_shard: int):
    for s in range(n_shards):
        with tarfile.open(folder / f"s-{s:06d}.tar", "w") as archive:
            for i in range(per_shard):
                data = f"{s}-{i}".encode()
                info = tarfile.TarInfo(f"{s:03d}{i:03d}.jpg")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return resolve_source(str(folder))


def _keys(stream, n: int) -> list[str]:
    return [sample["__key__"] for sample in itertools.islice(stream, n)]


def test_seeds_mix_every_part():
    assert derive_seed(1, 2) == derive_seed(1, 2)
    assert len({derive_seed(1, 2), derive_seed(2, 1), derive_seed(1, 3)}) == 3
    assert 0 <= derive_seed(7) < 2**63


@pytest.mark.parametrize("n_shards", [4, 1])  # one shard per slot, or fewer shards than slots: by sample
def test_one_epoch_over_all_slots_is_every_sample_once(tmp_path, n_shards):
    units = _shards(tmp_path, n_shards, per_shard=8 // n_shards)
    keys = [k for slot in range(2) for k in _keys(slot_stream(units, 0, slot, 2, shuffle_buffer=4, epochs=1), 99)]
    assert sorted(keys) == sorted(f"{s:03d}{i:03d}" for s in range(n_shards) for i in range(8 // n_shards))


def test_the_order_is_a_function_of_the_seed_and_changes_each_epoch(tmp_path):
    units = _shards(tmp_path, 4, per_shard=4)
    first = _keys(slot_stream(units, seed=3, slot=0, n_slots=1, shuffle_buffer=8), 32)
    assert first == _keys(slot_stream(units, seed=3, slot=0, n_slots=1, shuffle_buffer=8), 32)
    assert first != _keys(slot_stream(units, seed=4, slot=0, n_slots=1, shuffle_buffer=8), 32)
    assert first[:16] != first[16:] and sorted(first[:16]) == sorted(first[16:])  # two epochs, reshuffled


@pytest.mark.parametrize("skip", [5, 16, 21])  # inside the first epoch, one whole epoch, into the second
def test_a_resume_skips_exactly_what_was_consumed(tmp_path, skip):
    units = _shards(tmp_path, 4, per_shard=4)
    uninterrupted = _keys(slot_stream(units, seed=1, slot=0, n_slots=1, shuffle_buffer=4), 40)
    resumed = _keys(slot_stream(units, seed=1, slot=0, n_slots=1, shuffle_buffer=4, skip=skip), 40 - skip)
    assert resumed == uninterrupted[skip:]


def test_the_shuffle_keeps_every_item_and_holds_at_most_its_byte_budget():
    items = [(i, bytes(10)) for i in range(60)]  # 10 bytes each: a 30-byte budget holds 3 with the incoming one

    def size_of(item: tuple[int, bytes]) -> int:
        return len(item[1])

    out = list(shuffled(iter(items), 8, torch.Generator().manual_seed(0), max_bytes=30, size_of=size_of))
    assert sorted(out) == items and out != items
    # an item leaves only after it was read: at most 3 held means item i is out no earlier than position i - 2
    assert max(index - position for position, (index, _) in enumerate(out)) <= 2
    unbounded = list(shuffled(iter(items), 8, torch.Generator().manual_seed(0)))
    assert max(index - position for position, (index, _) in enumerate(unbounded)) > 2  # the budget is what bounds it
    assert unbounded == list(shuffled(iter(items), 8, torch.Generator().manual_seed(0)))  # a function of the seed


def test_a_slot_that_reads_nothing_stops_naming_its_shards(tmp_path):
    empty = tmp_path / "s-000000.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(SourceError, match=r"slot 0/1 read no sample in \d+ epochs from \['.*s-000000.tar'\]"):
        next(slot_stream(resolve_source(str(empty)), seed=0, slot=0, n_slots=1, shuffle_buffer=1))
