"""End-to-end runs of eval/knn.py and eval/linear.py on a tiny exported backbone and image folders."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dinolite.eval.backbone import load_any_backbone
from dinolite.export.spec import BackboneSpec, ExportFormatError, spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import DinoVisionTransformer

ROOT = Path(__file__).resolve().parents[2]


def _entrypoint(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(path: Path, depth: int = 2) -> Path:
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=depth, num_heads=2)
    spec = spec_from_backbone(model, train_img_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return write_safetensors(model.state_dict(), spec, path)[0]


def _folder(root: Path, per_class: int, seed: int) -> Path:
    """Three classes of 16x16 images: mostly red, green or blue with noise (easy for any features)."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
            img[..., c] += 180
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return {
        "backbone": _export(tmp / "tiny.safetensors"),
        "train": _folder(tmp / "train", 12, 0),
        "val": _folder(tmp / "val", 4, 1),
        "tmp": tmp,
    }


@pytest.mark.slow
def test_knn_cli_writes_json_and_reuses_cache(workdir, capsys):
    out, cache = workdir["tmp"] / "knn.json", workdir["tmp"] / "cache"
    argv = [
        "--backbone",
        str(workdir["backbone"]),
        "--train",
        str(workdir["train"]),
        "--val",
        str(workdir["val"]),
        "--ks",
        "1",
        "5",
        "--features",
        "cls+avgpool",
        "--num-workers",
        "0",
        "--no-progress",
        "--cache-dir",
        str(cache),
        "--output",
        str(out),
    ]
    assert _entrypoint("knn").main(argv) == 0
    first = json.loads(out.read_text())
    assert set(first["per_k"]) == {"1", "5", "20"} and first["num_train"] == 36 and first["num_test"] == 12
    assert first["k"] == 20 and first["top1"] == first["per_k"]["20"]["top1"]  # the headline k, always run
    assert first["top1"] > 80.0  # colour classes are trivially separable
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert _entrypoint("knn").main(argv) == 0
    assert "features from cache" in capsys.readouterr().out
    assert json.loads(out.read_text())["per_k"] == first["per_k"]


@pytest.mark.slow
def test_linear_cli_writes_grid(workdir, capsys):
    out = workdir["tmp"] / "linear.json"
    argv = [
        "--backbone",
        str(workdir["backbone"]),
        "--train",
        str(workdir["train"]),
        "--val",
        str(workdir["val"]),
        "--learning-rates",
        "0.01",
        "1.0",
        "--n-blocks",
        "1",
        "2",
        "--epochs",
        "20",
        "--probe-batch-size",
        "8",
        "--select-on",
        "val",
        "--num-workers",
        "0",
        "--no-progress",
        "--output",
        str(out),
    ]
    assert _entrypoint("linear").main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["grid"]) == 8
    assert result["top1"] == max(g["val_top1"] for g in result["grid"])
    assert set(result["best"]) == {"lr", "n_blocks", "avgpool"}
    out = capsys.readouterr().out
    assert "8 heads; the 5 best on val" in out and len(out.splitlines()) <= 10  # summary, not the grid


def test_missing_data_folder_fails_with_one_error_line(workdir, tmp_path, capsys):
    argv = ["--backbone", str(workdir["backbone"]), "--train", str(tmp_path / "nope"), "--val", str(workdir["val"])]
    assert _entrypoint("knn").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --train: ") and "nope does not exist" in err and err.count("\n") == 1


def test_val_classes_must_match_train(workdir, tmp_path, capsys):
    val = _folder(tmp_path / "val", 1, 0)
    (val / "class9").mkdir()
    Image.new("RGB", (16, 16)).save(val / "class9" / "x.png")
    argv = ["--backbone", str(workdir["backbone"]), "--train", str(workdir["train"]), "--val", str(val)]
    assert _entrypoint("linear").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "only in validation: ['class9']" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["knn", "linear", "segmentation", "visualize"])
def test_help_shows_defaults(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _entrypoint(name).main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())  # past the usage line
    for action in _entrypoint(name).build_parser()._actions:
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.dest != "help"
        ):
            # the default follows the option's own entry, before the next option starts
            entry = help_text.split(action.option_strings[-1] + " ", 1)[1].split(" --", 1)[0]
            assert f"(default: {action.default})" in entry, (action.option_strings, entry)


def test_backbone_of_another_architecture_is_refused(tmp_path):
    # Weights of a depth-2 ViT under a record that claims depth 3.
    path = _export(tmp_path / "b.safetensors", depth=2)
    record = json.loads((tmp_path / "b.safetensors.json").read_text())
    record["depth"] = 3
    write_safetensors(load_file(str(path)), BackboneSpec.from_mapping(record), path)  # the header is authoritative
    with pytest.raises(ExportFormatError, match=r"depth=3 but the weights in .*b\.safetensors have 2 blocks"):
        load_any_backbone(path)


def test_load_any_backbone_returns_frozen_model_and_names_missing_path(workdir, tmp_path):
    model = load_any_backbone(workdir["backbone"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.spec.train_img_size == 16
    with pytest.raises(FileNotFoundError, match="--backbone .*missing"):
        load_any_backbone(tmp_path / "missing")
