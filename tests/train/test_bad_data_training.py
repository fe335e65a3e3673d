"""A training run on bad data (issue 16, items 4, 7, 8): a 16-bit PNG, a decompression bomb, an
undecodable file and a cut shard are skipped or reported, the counts reach metrics.jsonl the way
``skipped_samples`` always did, and a resume goes through the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dinolite.config import load_config
from dinolite.data.augment import MultiCropAugmentation
from dinolite.data.loader import LoaderOptions, build_train_loader
from dinolite.train.loop import train
from dinolite.train.methods.dinov2 import build_collate
from tests.data.test_bad_data import png, png16, write_shard
from tests.data.test_decode import bomb_png
from tests.train.test_loop import TINY


def bad_shards(root: Path) -> list[str]:
    write_shard(root / "a.tar", [(f"a{i}", png16() if i == 1 else png(7 * i)) for i in range(6)])
    write_shard(root / "b.tar", [(f"b{i}", bomb_png(2000) if i == 2 else png(11 * i)) for i in range(6)])
    write_shard(root / "c.tar", [(f"c{i}", b"junk" if i == 4 else png(13 * i)) for i in range(6)])
    whole = write_shard(root / "d_whole.tar", [(f"d{i}", png(17 * i)) for i in range(6)]).read_bytes()
    (root / "d.tar").write_bytes(whole[: 512 * 12])  # cut at a header boundary after 3 samples
    return [str(root / f"{name}.tar") for name in "abcd"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_on_bad_data_logs_the_counts_and_resumes(tmp_path):
    torch.set_num_threads(1)
    source = bad_shards(tmp_path)
    overrides = [
        *TINY,
        f"data.source=[{','.join(source)}]",
        "data.shuffle_buffer=0",
        "data.max_image_pixels=1000000",
        "train.log_every=4",
        "train.checkpoint_every=4",
        "evaluation.knn_at_end=false",
        "evaluation.online_every=0",
    ]
    run = tmp_path / "run"
    first = train(load_config("demo", [*overrides, f"train.output_dir={run}", "train.max_iterations=4"]))
    assert first.status == "finished" and first.iteration == 4
    second = train(load_config("demo", [*overrides, f"train.output_dir={run}"]))  # resumes at 4
    assert second.status == "finished" and second.iteration == 8

    # Reference: the same stream read directly, batch by batch.
    cfg = load_config("demo", overrides)
    loader = build_train_loader(
        source,
        MultiCropAugmentation.from_config(cfg.crops),
        build_collate(cfg),
        LoaderOptions(batch_size=4, seed=cfg.train.seed, max_image_pixels=1_000_000),
    )
    it = iter(loader)
    expected = [next(it) for _ in range(8)]
    logged = [r for r in records(run) if "loss" in r]
    assert [r["iteration"] for r in logged] == [1, 4, 8]  # iteration 1 is always logged (log_due)
    for record, batches in zip(logged, (expected[:1], expected[1:4], expected[4:])):
        assert record["skipped_samples"] == sum(b["skipped_samples"] for b in batches)
        assert record["damaged_shards"] == sum(b["damaged_shards"] for b in batches)
    # 21 samples per epoch (18 whole + 3 before the cut): 8 batches of 4 cover epoch 0 and part of 1.
    assert sum(r["skipped_samples"] for r in logged) >= 2  # the bomb and the junk file of epoch 0
    assert sum(r["damaged_shards"] for r in logged) >= 1
