"""The built-in data sets: which ``data.source`` names one, the near-miss a typo gets, and where each is
written (digits at the data root as it always was, the others in a folder of their name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.data import builtin_sets
from dinolite.data.builtin_sets import (
    BuiltinSet,
    builtin_set,
    builtin_sets_text,
    misspelt_builtin_set,
    prepare_builtin_set,
    write_builtin_set,
)


def test_builtin_sets_name_fashion_mnist_beside_digits(tmp_path):
    assert builtin_set(["fashion_mnist"]) == "fashion_mnist" and builtin_set(["digits"]) == "digits"
    assert builtin_set(["fashion_mnist", "digits"]) is None and builtin_set(["/data/shards"]) is None
    with pytest.raises(ValueError, match="unknown built-in data set 'mnist'"):
        prepare_builtin_set("mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown built-in data set 'mnist'"):
        write_builtin_set("mnist", tmp_path)


@pytest.mark.parametrize(
    ("source", "meant"),
    [(["fashion-mnist"], "fashion_mnist"), (["Fashion_MNIST"], "fashion_mnist"), (["digit"], "digits")],
)
def test_a_near_miss_names_the_set_it_most_likely_meant(source, meant):
    assert misspelt_builtin_set(source) == meant


def test_real_paths_sets_and_far_names_are_no_near_miss(tmp_path):
    folder = tmp_path / "digit"
    folder.mkdir()
    assert misspelt_builtin_set([str(folder)]) is None  # an existing path is the user's data
    assert misspelt_builtin_set(["digits"]) is None  # a set's own name is no typo
    assert misspelt_builtin_set(["/data/shards-{000..009}.tar"]) is None
    assert misspelt_builtin_set(["digit", "digits"]) is None  # a list of sources is never a set


def test_message_lists_every_set():
    assert builtin_sets_text() == "[digits] or [fashion_mnist]"


@pytest.fixture
def recorded_sets(monkeypatch):
    """Replace the preparers by ones that record the folder and options they were given."""
    calls: list[tuple[Path, dict]] = []

    def prepare(root: Path, **options) -> dict:
        calls.append((root, options))
        return {"train": [str(root / "train-*.tar")]}

    sets = {"digits": BuiltinSet(prepare, ""), "fashion_mnist": BuiltinSet(prepare, "fashion_mnist")}
    monkeypatch.setattr(builtin_sets, "BUILTIN_SETS", sets)
    return calls


def test_a_run_writes_digits_at_the_data_root_and_others_in_their_folder(tmp_path, recorded_sets):
    prepare_builtin_set("digits", tmp_path)
    prepare_builtin_set("fashion_mnist", tmp_path)
    assert recorded_sets == [(tmp_path, {}), (tmp_path / "fashion_mnist", {})]


def test_the_shards_command_writes_at_its_root_and_passes_the_shard_size(tmp_path, recorded_sets):
    write_builtin_set("fashion_mnist", tmp_path)
    write_builtin_set("fashion_mnist", tmp_path, shard_size=100)
    assert recorded_sets == [(tmp_path, {}), (tmp_path, {"shard_size": 100})]
