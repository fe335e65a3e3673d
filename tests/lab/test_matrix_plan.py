"""The lab's plan: every run of a matrix resolved to its training config, with the budget, cadence and data
the lab sets; ``--data`` on another built-in set."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.config import ConfigError
from dinolite.lab.matrix_plan import plan_matrix
from tests.lab.test_matrix import VALID, write


def test_plan_compresses_the_presets_schedules_into_the_budget_and_sets_the_cadence(tmp_path):
    plan = plan_matrix(write(tmp_path, VALID), prepare=False)
    assert [r.label for r in plan.runs] == ["dino", "no-centering"]
    cfg = plan.runs[1].config
    assert cfg.optim.epochs == 10  # the demo's 10 epochs now last 20 iterations each: 200 in all
    assert (cfg.train.iterations_per_epoch, cfg.train.max_iterations) == (20, 200)
    assert (cfg.monitor.every, cfg.train.log_every, cfg.monitor.action) == (10, 10, "warn")
    assert (cfg.train.checkpoint_every, cfg.train.keep_last_checkpoints, cfg.monitor.spectrum_every) == (50, 5, 50)
    assert cfg.teacher.center_momentum == 1.0 and plan.runs[0].config.teacher.center_momentum == 0.9
    assert Path(cfg.train.output_dir) == tmp_path / "out" / "no-centering"
    assert plan.report_dir == tmp_path / "out" / "report"
    assert not (tmp_path / "out").exists()  # planning without `prepare` writes nothing


def test_fashion_mnist_data_is_prepared_once_with_its_own_evaluation_split(tmp_path, monkeypatch):
    from dinolite.data.fashion_mnist import DIR_ENV
    from tests.data.fashion_idx import synthetic_splits, write_idx_set

    monkeypatch.setenv(DIR_ENV, str(write_idx_set(tmp_path / "idx", synthetic_splits(train=8, val=4))))
    path = write(tmp_path, VALID + "data: [fashion_mnist]\n")
    assert list(plan_matrix(path, prepare=False).runs[0].config.data.source) == ["fashion_mnist"]
    plan = plan_matrix(path)
    data = tmp_path / "out" / "data" / "fashion_mnist"
    assert list(plan.runs[1].config.data.source) == [str(data / "train" / "train-*.tar.gz")]
    assert (plan.eval_train, plan.eval_val) == ([str(data / "train")], [str(data / "val")])
    with pytest.raises(ConfigError, match=r"'data' is \['/data/shards'\], not \[digits\] or \[fashion_mnist\]"):
        plan_matrix(write(tmp_path, VALID + "data: [/data/shards]\n"), prepare=False)


def test_data_replaces_the_matrixs_data_for_every_run_in_a_folder_of_its_own(tmp_path, monkeypatch):
    from dinolite.data.fashion_mnist import DIR_ENV
    from tests.data.fashion_idx import synthetic_splits, write_idx_set

    monkeypatch.setenv(DIR_ENV, str(write_idx_set(tmp_path / "idx", synthetic_splits(train=8, val=4))))
    path = write(tmp_path, VALID)
    dry = plan_matrix(path, prepare=False, data="fashion_mnist")
    assert all(list(r.config.data.source) == ["fashion_mnist"] for r in dry.runs)
    assert dry.output_dir == tmp_path / "out-fashion_mnist"  # never the digits runs' folder
    assert not dry.output_dir.exists()  # a dry plan prepares no data
    plan = plan_matrix(path, data="fashion_mnist")
    data = tmp_path / "out-fashion_mnist" / "data" / "fashion_mnist"
    assert all(list(r.config.data.source) == [str(data / "train" / "train-*.tar.gz")] for r in plan.runs)
    assert (plan.eval_train, plan.eval_val) == ([str(data / "train")], [str(data / "val")])
    assert (plan.matrix.data, plan.replaced_data) == (["fashion_mnist"], ["digits"])
    assert plan.runs[1].run_dir == tmp_path / "out-fashion_mnist" / "no-centering"
    # the matrix's own set: its own folder, nothing replaced; an explicit folder is used as given
    assert plan_matrix(path, prepare=False, data="digits").output_dir == tmp_path / "out"
    assert plan_matrix(path, tmp_path / "mine", prepare=False, data="fashion_mnist").output_dir == tmp_path / "mine"


def test_data_replaces_the_matrixs_own_evaluation_split(tmp_path):
    """A matrix's eval_train/eval_val belong to its data: with --data the set's own splits are used."""
    text = VALID + "data: [/data/shards]\neval_train: [/data/train]\neval_val: [/data/val]\n"
    plan = plan_matrix(write(tmp_path, text), prepare=False, data="digits")
    assert (plan.matrix.eval_train, plan.matrix.eval_val) == ([], [])
    assert (plan.eval_train, plan.eval_val) == ([], [])
    assert plan.output_dir == tmp_path / "out-digits" and plan.replaced_data == ["/data/shards"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("fashion-mnist", r"--data 'fashion-mnist' is not a built-in data set; did you mean 'fashion_mnist'\?"),
        ("cifar10", r"--data 'cifar10' is not a built-in data set \(the built-in sets: digits, fashion_mnist;"),
    ],
)
def test_data_must_be_a_built_in_set(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        plan_matrix(write(tmp_path, VALID), prepare=False, data=name)
    assert not (tmp_path / f"out-{name}").exists()


def test_select_keeps_the_matrix_order_and_names_a_near_label(tmp_path):
    plan = plan_matrix(write(tmp_path, VALID), prepare=False)
    assert [r.label for r in plan.select(None)] == ["dino", "no-centering"]
    assert [r.label for r in plan.select(["no-centering", "dino"])] == ["dino", "no-centering"]
    with pytest.raises(ConfigError, match=r"m.yaml: no run labelled 'dinoo'; did you mean 'dino'\?"):
        plan.select(["dinoo"])
