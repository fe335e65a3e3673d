"""``dinolite-shards --dataset NAME OUT``: a built-in data set written as the shards ``data.source=[NAME]``
trains on (the IDX files are written here, so the Debian package is not needed)."""

from __future__ import annotations

import pytest

import dinolite.data.fashion_mnist as fm
from dinolite.commands.shards import main as shards_main
from dinolite.data.builtin_sets import write_builtin_set
from dinolite.data.sources import read_unit, resolve_source
from tests.data.fashion_idx import synthetic_splits, write_idx_set


def _sample_count(folder: str) -> int:
    return sum(1 for unit in resolve_source([folder]) for _ in read_unit(unit))


def test_shards_command_writes_a_builtin_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(fm.DIR_ENV, str(write_idx_set(tmp_path / "idx", synthetic_splits(train=6, val=3))))
    assert shards_main(["--dataset", "fashion_mnist", str(tmp_path / "out"), "--shard-size", "4"]) == 0
    assert "train-*.tar.gz" in capsys.readouterr().out
    assert _sample_count(str(tmp_path / "out" / "train")) == 6
    assert sorted(p.name for p in (tmp_path / "out" / "train").glob("*.tar.gz")) == [
        "train-000000.tar.gz",
        "train-000001.tar.gz",
    ]
    assert write_builtin_set("fashion_mnist", tmp_path / "out")["val_folder"] == str(tmp_path / "out" / "val")
    with pytest.raises(SystemExit):
        shards_main(["--dataset", "fashion_mnist", str(tmp_path / "a"), str(tmp_path / "b")])
    assert "not SRC and OUT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shards_main(["--dataset", "fashion_mnist", str(tmp_path / "a"), "--max-side", "10"])
    assert "--shard-size only" in capsys.readouterr().err


def test_shards_command_without_dataset_needs_src_and_out(capsys):
    with pytest.raises(SystemExit):
        shards_main(["only-one-folder"])
    assert "give SRC and OUT" in capsys.readouterr().err
