"""Few-shot subsets: counts per class, reproducibility, and the kNN / linear CLIs using them."""

from __future__ import annotations

import json

import pytest
import torch

from dinolite.eval.few_shot import few_shot_indices
from tests.commands.test_eval_cli import _entrypoint, _export, _folder


def _dataset():
    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 1)
    indices = torch.arange(100, 115)
    return labels, indices


def test_shots_per_class_and_small_classes_keep_everything():
    labels, indices = _dataset()
    keep = few_shot_indices(labels, indices, shots=3, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [3, 3, 1]
    assert torch.all(keep[1:] > keep[:-1])


def test_fraction_is_per_class_with_at_least_one():
    labels, indices = _dataset()
    keep = few_shot_indices(labels, indices, fraction=0.5, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [5, 2, 1]
    assert len(few_shot_indices(labels, indices, fraction=1.0)) == 15


def test_subset_depends_on_indices_and_seed_not_on_order():
    labels, indices = _dataset()
    keep = few_shot_indices(labels, indices, shots=2, seed=7)
    chosen = set(indices[keep].tolist())
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(3))
    keep_shuffled = few_shot_indices(labels[perm], indices[perm], shots=2, seed=7)
    assert set(indices[perm][keep_shuffled].tolist()) == chosen
    draws = {tuple(indices[few_shot_indices(labels, indices, shots=2, seed=s)].tolist()) for s in range(6)}
    assert len(draws) > 1  # different seeds draw different subsets


def test_few_shot_arguments_are_validated():
    labels, indices = _dataset()
    with pytest.raises(ValueError, match="exactly one"):
        few_shot_indices(labels, indices)
    with pytest.raises(ValueError, match="--shots"):
        few_shot_indices(labels, indices, shots=0)
    with pytest.raises(ValueError, match="--train-fraction"):
        few_shot_indices(labels, indices, fraction=1.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshot")
    return {
        "backbone": _export(tmp / "tiny.safetensors"),
        "train": _folder(tmp / "train", 8, 0),
        "val": _folder(tmp / "val", 3, 1),
        "tmp": tmp,
    }


def test_knn_and_linear_clis_train_on_the_few_shot_subset(data, capsys):
    common = [
        "--backbone",
        str(data["backbone"]),
        "--train",
        str(data["train"]),
        "--val",
        str(data["val"]),
        "--num-workers",
        "0",
        "--no-progress",
        "--shots",
        "2",
        "--few-shot-seed",
        "1",
    ]
    out = data["tmp"] / "knn.json"
    assert _entrypoint("knn").main(common + ["--ks", "1", "--output", str(out)]) == 0
    knn = json.loads(out.read_text())
    assert knn["num_train"] == 6 and knn["few_shot"] == {"shots": 2, "train_fraction": None, "seed": 1}
    assert knn["top1"] > 80.0  # colour classes: two examples each suffice
    out = data["tmp"] / "linear.json"
    argv = common + [
        "--learning-rates",
        "1.0",
        "--n-blocks",
        "1",
        "--epochs",
        "30",
        "--probe-batch-size",
        "6",
        "--select-on",
        "val",
        "--output",
        str(out),
    ]
    assert _entrypoint("linear").main(argv) == 0
    linear = json.loads(out.read_text())
    assert linear["few_shot"]["shots"] == 2 and linear["top1"] > 80.0 and linear["standardized"] is False
    assert _entrypoint("linear").main(argv + ["--standardize"]) == 0
    standardized = json.loads(out.read_text())
    assert standardized["standardized"] is True and standardized["top1"] > 80.0
    assert _entrypoint("linear").main(argv + ["--mode", "online"]) == 2
    assert "need --mode cached" in capsys.readouterr().err
