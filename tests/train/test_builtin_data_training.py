"""Training on the built-in Fashion-MNIST set: ``data.source=[fashion_mnist]`` builds its shards in the
run's folder, trains on them, and the online evaluation and the end-of-run kNN report read its own
evaluation split; without the Debian package the run stops with the line that installs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinolite.commands.train import main
from dinolite.config import load_config
from dinolite.data import fashion_mnist as fm
from tests.data.fashion_idx import needs_package, real_subset

TWO_ITERATIONS = ["train.max_iterations=2", "evaluation.online_every=2", "train.checkpoint_every=1000"]


@needs_package
@pytest.mark.slow
def test_two_iterations_on_fashion_mnist_with_the_knn_report(tmp_path: Path, monkeypatch):
    # The standard split's report reads 70,000 images (8 minutes on a shared 2-core machine,
    # benchmarks/RESULTS.md); the run reads the first 640 training and 200 test images of the package's
    # files instead, through DINOLITE_FASHION_MNIST_DIR: the same reader, shards, loader and report.
    monkeypatch.setenv(fm.DIR_ENV, str(real_subset(tmp_path / "idx", train=640, val=200)))
    run = tmp_path / "run"
    assert main(["--config", "demo", "--output-dir", str(run), "data.source=[fashion_mnist]", *TWO_ITERATIONS]) == 0

    assert list(load_config(run / "config.yaml").data.source) == ["fashion_mnist"]
    for split, count in (("train", 640), ("val", 200)):
        index = json.loads((run / "data" / "fashion_mnist" / split / f"{split}-index.json").read_text())
        assert index["num_samples"] == count and index["classes"][7] == "Sneaker"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "eval/knn_top1" in r] == [2]
    knn = json.loads((run / "knn.json").read_text())["top1"]
    assert {"raw_pixels", "random_init/cls", "teacher/cls", "teacher/cls+avgpool"} <= set(knn)
    # 200 clothing images against 640: raw pixels classify them (digits would not be read as these labels)
    assert knn["raw_pixels"] > 60.0, knn
    assert all(10.0 < value <= 100.0 for value in knn.values()), knn


def test_fashion_mnist_without_the_package_names_the_apt_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv(fm.DIR_ENV, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    code = main(["--config", "demo", "--output-dir", str(tmp_path / "run"), "data.source=[fashion_mnist]"])
    assert code != 0
    err = capsys.readouterr().err
    assert "Fashion-MNIST is not installed" in err and "apt-get install dataset-fashion-mnist" in err
    assert not list((tmp_path / "run").glob("checkpoints/iter_*"))


def test_a_misspelt_builtin_set_gets_did_you_mean(tmp_path: Path, monkeypatch):
    from dinolite.config import ConfigError
    from dinolite.train.batches import validate_training_config

    for typed in ("fashion-mnist", "FashionMNIST", "digit"):
        cfg = load_config("demo", [f"data.source=[{typed}]"])
        with pytest.raises(
            ConfigError, match=r"'data.source': \[.*\] is no file or folder; did you mean \[(fashion_mnist|digits)\]"
        ):
            validate_training_config(cfg)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digit").mkdir()  # a folder of that name is what the user meant
    no_eval = ["evaluation.knn_at_end=false", "evaluation.online_every=0"]  # a folder brings no eval split
    validate_training_config(load_config("demo", ["data.source=[digit]", *no_eval]))
