"""dinolite/train/batches.py: the checks a run's data needs before it starts, and the loader's options."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.config import ConfigError, load_config
from dinolite.train.batches import check_data_source, loader_options, resolve_train_source, validate_training_config

NO_EVAL = ["evaluation.knn_at_end=false", "evaluation.online_every=0"]


def test_an_empty_source_says_what_to_give() -> None:
    with pytest.raises(ConfigError, match=r"data.source is empty: give shard patterns, an image folder, or"):
        check_data_source(load_config("demo", ["data.source=[]"]))


def test_a_misspelt_builtin_set_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean \[digits\]"):
        check_data_source(load_config("demo", ["data.source=[digit]"]))
    check_data_source(load_config("demo", [f"data.source=[{tmp_path}]"]))


@pytest.mark.parametrize(
    "override, key",
    [("evaluation.knn_at_end=true", "evaluation.knn_at_end"), ("evaluation.online_every=5", "evaluation.online_every")],
)
def test_evaluation_needs_labelled_data_unless_the_source_is_builtin(tmp_path: Path, override: str, key: str) -> None:
    others = [o for o in NO_EVAL if not o.startswith(override.split("=")[0])]
    with pytest.raises(ConfigError, match=f"invalid value for '{key}'"):
        validate_training_config(load_config("demo", [f"data.source=[{tmp_path}]", *others, override]))
    validate_training_config(load_config("demo", ["data.source=[digits]", *others, override]))
    labelled = [f"evaluation.knn_train=[{tmp_path}]", f"evaluation.knn_val=[{tmp_path}]"]
    validate_training_config(load_config("demo", [f"data.source=[{tmp_path}]", *others, override, *labelled]))


def test_a_source_of_paths_is_used_as_given_without_a_barrier(tmp_path: Path) -> None:
    calls: list[str] = []
    cfg = load_config("demo", [f"data.source=[{tmp_path}/a.tar,{tmp_path}/b.tar]"])
    assert resolve_train_source(cfg, tmp_path, True, lambda: calls.append("barrier")) == [
        f"{tmp_path}/a.tar",
        f"{tmp_path}/b.tar",
    ]
    assert calls == []


def test_loader_options_come_from_train_and_data() -> None:
    cfg = load_config("demo", ["train.batch_size_per_gpu=7", "train.seed=11", "data.num_workers=0"])
    options = loader_options(cfg, rank=1, world_size=3)
    assert (options.batch_size, options.seed, options.rank, options.world_size, options.num_workers) == (7, 11, 1, 3, 0)
    assert options.max_skip_fraction == cfg.data.decode_errors_max_fraction
    assert options.skip_window == cfg.data.decode_errors_window
