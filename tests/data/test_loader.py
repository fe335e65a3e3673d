import io
import shutil
import tarfile
from dataclasses import replace
from functools import partial

import pytest
import torch

from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.collate import collate_data_and_cast
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.loader import LoaderOptions, build_train_loader, decode_image, expand_source
from dinolite.data.masking import MaskingGenerator
from dinolite.data.sources import SourceError, brace_expand, image_bytes, resolve_source
from dinolite.data.train_stream import slot_stream
from tests.data.conftest import N_CLASSES, PER_CLASS

N_SAMPLES = N_CLASSES * PER_CLASS


def _pattern(shard_dir):
    return str(shard_dir / "shard-{000000..000005}.tar")


def _collate():
    return partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        n_tokens=16,
        mask_generator=MaskingGenerator((4, 4)),
    )


def _augment():
    return MultiCropAugmentation(16, 8, 2, (0.3, 1.0), (0.1, 0.3))


def test_brace_expansion():
    assert brace_expand("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert brace_expand("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert brace_expand("plain.tar") == ["plain.tar"]


def test_expand_source_forms(shard_dir, image_folder):
    shards = sorted(str(p) for p in shard_dir.glob("shard-*.tar"))
    assert expand_source([_pattern(shard_dir)]) == shards
    assert expand_source([str(shard_dir / "shard-*.tar")]) == shards
    assert expand_source(str(shard_dir)) == shards
    two = expand_source([shards[0], str(shard_dir / "shard-00000{1,2}.tar")])
    assert two == shards[:3]
    assert len(expand_source([str(image_folder)])) == N_SAMPLES
    assert expand_source(["pipe:cat x-{1..2}.tar"]) == ["pipe:cat x-1.tar", "pipe:cat x-2.tar"]
    assert all(u.num_samples == 4 for u in resolve_source([_pattern(shard_dir)]))


def test_start_up_errors_name_the_culprit(tmp_path, shard_dir):
    with pytest.raises(SourceError, match="missing-"):
        expand_source([str(tmp_path / "missing-{0..3}.tar")])
    with pytest.raises(SourceError, match="nothing-here"):
        expand_source([str(tmp_path / "nothing-here*.tar")])
    (tmp_path / "empty_folder" / "sub").mkdir(parents=True)
    with pytest.raises(SourceError, match="empty_folder"):
        expand_source([str(tmp_path / "empty_folder")])
    with pytest.raises(SourceError, match="empty"):
        expand_source([])
    with pytest.raises(SourceError, match="index.json"):
        expand_source([str(shard_dir / "shard-index.json")])
    with pytest.raises(SourceError, match="missing"):
        build_train_loader([str(tmp_path / "missing.tar")], _augment(), _collate(), LoaderOptions(2, shuffle_buffer=10))


def _keys(stream):
    return [(s["__url__"], s["__key__"]) for s in stream]


def test_folder_shards_and_pipe_give_the_same_samples(shard_dir, image_folder):
    def images(source):
        return sorted(image_bytes(s) for s in slot_stream(resolve_source(source), 0, 0, 1, 0, epochs=1))

    from_shards = images([_pattern(shard_dir)])
    assert len(from_shards) == N_SAMPLES
    assert images([str(image_folder)]) == from_shards
    assert images([f"pipe:cat {shard_dir}/shard-{{000000..000005}}.tar"]) == from_shards


@pytest.mark.parametrize("n_shards", [6, 3])  # 6 shards >= 4 slots: split by shard; 3 < 4: by sample
def test_two_ranks_two_workers_cover_every_sample_once_per_epoch(shard_dir, n_shards):
    units = resolve_source([str(shard_dir / f"shard-00000{{0..{n_shards - 1}}}.tar")])
    world_size, workers = 2, 2
    for epoch in range(3):
        seen = []
        for slot in range(world_size * workers):
            per_epoch = list(slot_stream(units, seed=5, slot=slot, n_slots=4, shuffle_buffer=3, epochs=epoch + 1))
            # the stream of one slot restarted at its epoch's first sample is that epoch
            previous = len(list(slot_stream(units, 5, slot, 4, 3, epochs=epoch)))
            seen += _keys(per_epoch[previous:])
        assert len(seen) == len(set(seen)) == 4 * n_shards
    # the epochs differ in order
    assert _keys(slot_stream(units, 5, 0, 4, 3, epochs=1)) != _keys(
        list(slot_stream(units, 5, 0, 4, 3, epochs=2))[len(list(slot_stream(units, 5, 0, 4, 3, epochs=1))) :]
    )


def test_eval_dataset_two_ranks_two_workers_exactly_once(shard_dir):
    labels = {}
    for rank in range(2):
        ds = build_eval_dataset([_pattern(shard_dir)], transform=None, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        for image, label, index in loader:
            assert image.dtype == torch.uint8 and image.shape[0] == 3
            assert index not in labels
            labels[index] = label
    assert sorted(labels) == list(range(N_SAMPLES))
    # make_shards wrote the folder in sorted order: 8 images per class
    assert [labels[i] for i in range(N_SAMPLES)] == [i // PER_CLASS for i in range(N_SAMPLES)]


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_start_batch_resumes_exactly(shard_dir, num_workers):
    # 24 samples, 2 slots of 12 per epoch at num_workers=2: batches of 4 cross epochs by batch 6.
    options = LoaderOptions(batch_size=4, num_workers=num_workers, seed=3, shuffle_buffer=5)
    make = partial(build_train_loader, [_pattern(shard_dir)], _augment(), _collate(), options)
    uninterrupted = _take(make(), 9)
    for k in (3, 7):
        _assert_same_batches(_take(make(start_batch=k), 9 - k), uninterrupted[k:])
    assert not torch.equal(uninterrupted[0]["collated_global_crops"], uninterrupted[1]["collated_global_crops"])
    other_seed = build_train_loader([_pattern(shard_dir)], _augment(), _collate(), replace(options, seed=4))
    assert not torch.equal(_take(other_seed, 1)[0]["collated_global_crops"], uninterrupted[0]["collated_global_crops"])


def test_resume_skips_whole_epochs_without_reading(shard_dir, monkeypatch):
    units = resolve_source([_pattern(shard_dir)])
    expected = list(slot_stream(units, 1, 0, 1, 5, epochs=4))[50:]
    import dinolite.data.train_stream as train_stream_module

    reads = []
    real = train_stream_module.read_unit
    monkeypatch.setattr(train_stream_module, "read_unit", lambda u, *budget: (reads.append(u.url), real(u, *budget))[1])
    resumed = list(slot_stream(units, 1, 0, 1, 5, skip=50, epochs=4))
    assert _keys(resumed) == _keys(expected)
    assert len(reads) == 6 * 2  # epochs 0 and 1 (48 samples) were skipped arithmetically


def _corrupt_copy(shard_dir, tmp_path):
    """The shards again, with the image of one sample in shard 2 replaced by garbage."""
    for shard in shard_dir.glob("shard-*"):
        shutil.copy(shard, tmp_path / shard.name)
    src = tmp_path / "shard-000002.tar"
    with tarfile.open(src) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(src, "w") as archive:
        for member, data in members:
            if member.name.startswith(members[0][0].name.split(".")[0]) and member.name.endswith(("jpg", "png")):
                data = b"\xff\xd8garbage"
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return str(tmp_path / "shard-{000000..000005}.tar")


def test_corrupt_sample_is_skipped_and_counted(shard_dir, tmp_path):
    pattern = _corrupt_copy(shard_dir, tmp_path)
    with pytest.raises(ValueError):
        decode_image(b"\xff\xd8garbage")
    batches = _take(build_train_loader([pattern], _augment(), _collate(), LoaderOptions(batch_size=6)), 4)  # one epoch
    assert [b["collated_global_crops"].shape[0] for b in batches] == [12] * 4
    assert sum(b["skipped_samples"] for b in batches) == 1
    indices = [i for _, _, i in build_eval_dataset([pattern], None)]
    assert len(indices) == N_SAMPLES - 1 and 8 not in indices


def test_truncated_shard_gives_what_was_read(shard_dir, tmp_path):
    """The damage report itself is tested in test_bad_data.py; here: no placeholder sample any more."""
    data = (shard_dir / "shard-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    damage: list[str] = []
    stream = list(slot_stream(resolve_source([str(tmp_path / "cut.tar")]), 0, 0, 1, 0, epochs=1, damage=damage))
    assert 0 < len(stream) < 4 and all("__error__" not in s for s in stream)
    assert len(damage) == 1 and "cut.tar" in damage[0]
