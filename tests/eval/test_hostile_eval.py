"""Hostile and unlucky inputs to the evaluations (issue 24): every case tried is one row of a table.

- ``CLI_CASES``: a command line and what it must print; no case may end in a traceback or in a
  number read off NaN features. Rows marked ``before_work`` must fail before any model is loaded.
- ``LABEL_CASES``: labels of any value give the result of the same data labelled ``0..C-1``, with no
  tensor sized by the largest label.
- ``LIBRARY_CASES``: the functions the command lines, the trainer's online evaluation and the lab
  share, called directly.

Numeric options refused at parse time are in ``tests/test_cli.py``. To add a case, add a row.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dinolite.commands import knn as knn_cli
from dinolite.commands import linear as linear_cli
from dinolite.commands import segmentation as segmentation_cli
from dinolite.commands import visualize as visualize_cli
from dinolite.eval.collapse_verdict import collapse_report
from dinolite.eval.finite import NonFiniteError
from dinolite.eval.knn import knn_classify
from dinolite.eval.linear import head_grid, linear_probe_cached
from dinolite.eval.online import LabelledImages, OnlineEvalOptions, OnlineEvaluator
from dinolite.eval.segmentation import IGNORE_INDEX, LinearSegmentationHead, train_segmentation_head
from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import DinoVisionTransformer

HUGE_LABEL = 2**40  # sized by value, a (rows, 2**40) table: allocation fails at once instead of using RAM
MAINS = {"knn": knn_cli.main, "linear": linear_cli.main, "segmentation": segmentation_cli.main}
MAINS["visualize"] = visualize_cli.main


# ------------------------------------------------------------------------------------------ inputs


def _vit() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2)


def _export(path: Path, poison: Callable[[dict[str, torch.Tensor]], None] = lambda state: None) -> Path:
    model = _vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    poison(state)
    spec = spec_from_backbone(model, train_img_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return write_safetensors(state, spec, path)[0]


def _set(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda state: state[key].view(-1).__setitem__(0, value)


def _class_images(per_class: int, seed: int) -> list[list[np.ndarray]]:
    """Three classes of 16x16 images: mostly red, green or blue, with noise."""
    rng = np.random.default_rng(seed)
    classes = []
    for c in range(3):
        images = []
        for _ in range(per_class):
            img = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
            img[..., c] += 180
            images.append(img)
        classes.append(images)
    return classes


def _folder(root: Path, classes: list[list[np.ndarray]]) -> Path:
    for c, images in enumerate(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


def _shard(path: Path, classes: list[list[np.ndarray]], labels: list[int]) -> Path:
    """One webdataset shard: ``{key}.png`` and ``{key}.cls`` (class ``c`` labelled ``labels[c]``)."""
    with tarfile.open(path, "w") as tar:
        for c, images in enumerate(classes):
            for i, img in enumerate(images):
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                for name, data in ((f"s{c}_{i}.png", png.getvalue()), (f"s{c}_{i}.cls", str(labels[c]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return path


def _segmentation_data(root: Path) -> Path:
    """ADE20K layout: 16x16 images whose 4x4 patches are red, green or blue; masks hold 1 + the colour id."""
    colours = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    for split, count in (("training", 4), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            ids = rng.integers(0, 3, size=(4, 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            Image.fromarray(colours[ids]).save(root / "images" / split / f"{i}.png")
            Image.fromarray(ids + 1).save(root / "annotations" / split / f"{i}.png")
    return root


@dataclass
class Env:
    root: Path
    backbones: dict[str, Path]
    train: Path
    val: Path
    segmentation: Path
    classes: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)

    def argv(self, cli: str, backbone: str = "good") -> list[str]:
        """A quick, valid command line of ``cli`` on the tiny backbone and data."""
        model = self.backbones.get(backbone, backbone)
        data = ["--train", str(self.train), "--val", str(self.val), "--num-workers", "0", "--no-progress"]
        return {
            "knn": ["--backbone", str(model), *data, "--ks", "3"],
            "linear": ["--backbone", str(model), *data, "--learning-rates", "0.1", "--n-blocks", "1"]
            + ["--epochs", "2", "--probe-batch-size", "4", "--select-on", "val"],
            "segmentation": ["--backbone", str(model), "--data", str(self.segmentation), "--num-classes", "3"]
            + ["--reduce-zero-label", "--iterations", "2", "--batch-size", "2", "--inference", "resize"]
            + ["--num-workers", "0", "--no-progress"],
            "visualize": ["--backbone", str(model), "--images", str(self.val), "--device", "cpu"]
            + ["--output", str(self.root / "vis")],
        }[cli]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("hostile")
    train, val = _class_images(4, 0), _class_images(2, 1)
    (root / "a_file").write_text("not a folder\n")
    (root / "a_dir").mkdir()
    return Env(
        root=root,
        backbones={
            "good": _export(root / "good.safetensors"),
            "nan": _export(root / "nan.safetensors", _set("blocks.0.attn.qkv.weight", float("nan"))),
            "inf": _export(root / "inf.safetensors", _set("norm.weight", float("inf"))),
        },
        train=_folder(root / "train", train),
        val=_folder(root / "val", val),
        segmentation=_segmentation_data(root / "seg"),
        classes={"train": train, "val": val},
    )


def _run(cli: str, argv: list[str], capsys) -> tuple[int, str, str]:
    code = MAINS[cli](argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------- CLI cases


@dataclass(frozen=True)
class CliCase:
    id: str
    cli: str
    extra: Callable[[Env, Path], list[str]]  # added to env.argv(cli, backbone); may prepare files
    error: str  # in the one `error:` line (exit code 2)
    backbone: str = "good"
    before_work: bool = False  # fails before a model is loaded
    hide_hub: bool = False  # huggingface_hub is not installed


def _poisoned_cache(env: Env, tmp: Path) -> list[str]:
    """A feature cache written by a clean run, then one train feature set to NaN (a shared cache dir)."""
    cache = tmp / "cache"
    assert knn_cli.main(env.argv("knn") + ["--cache-dir", str(cache)]) == 0
    (train_file,) = cache.glob("train-*.safetensors")
    tensors = load_file(str(train_file))
    tensors["features"][1, 0] = float("nan")
    save_file(tensors, str(train_file))
    return ["--cache-dir", str(cache)]


NO_EXTRA: Callable[[Env, Path], list[str]] = lambda env, tmp: []  # noqa: E731


def _output_case(cli: str, option: str, relative: str, error: str) -> CliCase:
    """``option`` pointing at ``relative`` in the fixture folder (``a_dir`` and ``a_file`` exist)."""
    return CliCase(
        f"{cli}{option}-{relative}", cli, lambda e, t: [option, str(e.root / relative)], error, before_work=True
    )


NAN_WEIGHT = "blocks.0.attn.qkv.weight (1 NaN)"

CLI_CASES = [
    # One NaN weight evaluated to chance (33.3% on 3 classes) with exit code 0.
    CliCase("knn-nan-weight", "knn", NO_EXTRA, NAN_WEIGHT, backbone="nan"),
    CliCase("linear-nan-weight", "linear", NO_EXTRA, NAN_WEIGHT, backbone="nan"),
    CliCase("segmentation-nan-weight", "segmentation", NO_EXTRA, NAN_WEIGHT, backbone="nan"),
    CliCase("visualize-nan-weight", "visualize", NO_EXTRA, NAN_WEIGHT, backbone="nan"),
    CliCase("knn-inf-weight", "knn", NO_EXTRA, "norm.weight (1 inf)", backbone="inf"),
    # Cached features are a file like any other.
    CliCase("knn-nan-in-feature-cache", "knn", _poisoned_cache, "--train features (from the cache"),
    # --output was checked only after the whole evaluation ran.
    _output_case("knn", "--output", "a_dir", "--output"),
    _output_case("linear", "--output", "a_file/r.json", "is not a directory"),
    _output_case("segmentation", "--output", "a_dir", "--output"),
    _output_case("visualize", "--output", "a_file", "--output"),
    _output_case("knn", "--cache-dir", "a_file", "--cache-dir"),
    # A missing `hub` extra printed MissingExtraError with a traceback.
    *(
        CliCase(
            f"{cli}-hub-extra-missing", cli, NO_EXTRA, "pip install 'dinolite[hub]'", "hf-hub:org/name", hide_hub=True
        )
        for cli in ("knn", "linear", "segmentation")
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_case(case: CliCase, env: Env, tmp_path: Path, monkeypatch, capsys) -> None:
    argv = env.argv(case.cli, case.backbone) + case.extra(env, tmp_path)
    capsys.readouterr()
    if case.hide_hub:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` raises
    if case.before_work:

        def no_loading(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the backbone was loaded before the bad option was reported")

        monkeypatch.setattr("dinolite.commands.eval_common.load_any_backbone", no_loading)
        monkeypatch.setattr("dinolite.commands.visualize.load_any_backbone", no_loading)
    code, out, err = _run(case.cli, argv, capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert case.error in err, err


# ----------------------------------------------------------------------------------- label cases

# (id, command line, extra arguments, result fields compared): the same images, labelled {0, 1, HUGE_LABEL}
# and {0, 1, 2}.
LABEL_CASES: list[tuple[str, str, list[str], Callable[[dict], Any]]] = [
    ("knn", "knn", [], lambda result: (result["per_k"], result["num_train"])),
    ("linear", "linear", [], lambda result: [g["val_top1"] for g in result["grid"]]),
    ("linear-online", "linear", ["--mode", "online"], lambda result: [g["val_top1"] for g in result["grid"]]),
]


@pytest.mark.parametrize(("cli", "extra", "fields"), [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_huge_label_is_sized_by_the_data(
    cli: str, extra: list[str], fields: Callable, env: Env, tmp_path: Path, capsys
) -> None:
    results = []
    for name, labels in (("dense", [0, 1, 2]), ("huge", [0, 1, HUGE_LABEL])):
        train = _shard(tmp_path / f"{name}-train.tar", env.classes["train"], labels)
        val = _shard(tmp_path / f"{name}-val.tar", env.classes["val"], labels)
        out = tmp_path / f"{name}.json"
        argv = env.argv(cli) + ["--train", str(train), "--val", str(val), "--output", str(out), *extra]
        code, _, err = _run(cli, argv, capsys)
        assert code == 0, err
        results.append(json.loads(out.read_text()))
    assert fields(results[1]) == fields(results[0])


@pytest.mark.parametrize("cli", ["knn", "linear"])
def test_a_val_class_absent_from_train_counts_as_a_miss_with_a_warning(cli: str, env: Env, tmp_path: Path, capsys):
    """A val label the training set lacks is legitimate data (a subset, a rare class): it cannot be
    predicted, so it lowers the accuracy, and stderr says how many images carry it."""
    train = _shard(tmp_path / "train.tar", env.classes["train"], [0, 1, 2])
    val = _shard(tmp_path / "val.tar", env.classes["val"], [0, 1, 7])
    out = tmp_path / "r.json"
    argv = env.argv(cli) + ["--train", str(train), "--val", str(val), "--output", str(out)]
    code, _, err = _run(cli, argv, capsys)
    assert code == 0, err
    unseen, total = len(env.classes["val"][2]), sum(len(images) for images in env.classes["val"])
    assert f"warning: {unseen} of {total} images of --val" in err and "labels 7" in err, err
    result = json.loads(out.read_text())
    top1 = result["top1"] if cli == "knn" else max(g["val_top1"] for g in result["grid"])
    assert top1 <= 100.0 * (total - unseen) / total + 1e-9


# --------------------------------------------------------------------------------- library cases


def _features(rows: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated classes in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(rows // 3)
    return torch.randn(rows, 8, generator=g) * 0.1 + torch.eye(8)[labels] * 3, labels


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[2, 3] = float("nan")
    return x


def _knn(train=None, test=None, temperature: float = 0.07, train_labels=None, test_labels=None) -> dict:
    (tx, ty), (vx, vy) = _features(), _features(6, 1)
    train_labels = ty if train_labels is None else train_labels
    test_labels = vy if test_labels is None else test_labels
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1  # as the online/lab/report callers do
    return knn_classify(
        tx if train is None else train, train_labels, vx if test is None else test, test_labels, num_classes,
        ks=(3,), temperature=temperature, headline_k=3,
    )  # fmt: skip


def _probe(train=None, val=None, lrs=(0.1,), epochs: int = 2, labels=None) -> Any:
    (tx, ty), (vx, vy) = _features(), _features(6, 1)
    if labels is not None:
        ty, vy = labels[ty], labels[vy]
    return linear_probe_cached(
        tx if train is None else train, ty, torch.arange(len(ty)), vx if val is None else val, vy,
        embed_dim=8, n_available=1, num_classes=int(ty.max()) + 1, specs=head_grid(list(lrs), [1], [False]),
        epochs=epochs, batch_size=4, select_on="val",
    )  # fmt: skip


def _online(backbone_poison: Callable | None = None, huge: bool = False) -> dict:
    images = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(3).repeat(10) * (HUGE_LABEL if huge else 1)
    backbone = _vit()
    if backbone_poison is not None:
        with torch.no_grad():
            backbone_poison(dict(backbone.named_parameters()))
    evaluator = OnlineEvaluator(
        LabelledImages(images, labels),
        LabelledImages(images[:9], labels[:9]),
        OnlineEvalOptions(every=1, k=3, linear=True),
    )
    return evaluator.evaluate(backbone, torch.device("cpu"))


def _segmentation(all_ignored_first: bool = False, poison: bool = False) -> list[float]:
    """Train a head for 4 steps on two 16x16 images; optionally one mask is all ignored (its mean
    cross-entropy is 0/0: a NaN loss was recorded, the run's ``final_loss``), or a NaN weight."""
    backbone = _vit().eval()
    if poison:
        with torch.no_grad():
            backbone.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    masks = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    if all_ignored_first:
        masks[0] = IGNORE_INDEX
    dataset = [(torch.randn(3, 16, 16), masks[i]) for i in range(2)]
    head = LinearSegmentationHead(16, 3)
    losses = train_segmentation_head(
        backbone, head, dataset, n_layers=1, iterations=4, batch_size=1, lr=1e-2, device=torch.device("cpu")
    )
    assert all(bool(torch.isfinite(p).all()) for p in head.parameters()), "the head's weights became NaN"
    assert all(np.isfinite(losses)), f"a NaN loss was recorded (an all-ignored batch is 0/0): {losses}"
    return losses


def _knn_tiny_temperature_is_one_nn() -> None:
    """At T=0.001 the votes are the nearest neighbour's; exp(s / T) overflowed to inf and tied classes."""
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.15], [0.0, 1.0]])
    result = knn_classify(
        train, torch.tensor([0, 0, 1, 2]), torch.tensor([[1.0, 0.14]]), torch.tensor([1]), 3,
        ks=(3,), temperature=0.001, headline_k=3,
    )  # fmt: skip
    assert result["top1"] == 100.0


def _same(call: Callable[..., Any], dense: dict, huge: dict, read: Callable[[Any], Any]) -> None:
    assert read(call(**huge)) == read(call(**dense))


# (id, call, exception expected or None, fragment of its message)
LIBRARY_CASES: list[tuple[str, Callable[[], Any], type[BaseException] | None, str]] = [
    ("knn-nan-train-features", lambda: _knn(train=_with_nan(_features()[0])), NonFiniteError, "knn: train features: 1 of 12 rows"),
    ("knn-inf-test-features", lambda: _knn(test=_features(6, 1)[0] / 0), NonFiniteError, "knn: test features: 6 of 6 rows"),
    ("knn-temperature-0", lambda: _knn(temperature=0.0), ValueError, "temperature must be a positive finite number"),
    ("knn-temperature-nan", lambda: _knn(temperature=float("nan")), ValueError, "temperature"),
    ("knn-tiny-temperature", _knn_tiny_temperature_is_one_nn, None, ""),
    ("knn-huge-labels", lambda: _same(
        _knn, {}, {"train_labels": _features()[1] * HUGE_LABEL, "test_labels": _features(6, 1)[1] * HUGE_LABEL},
        lambda r: r["per_k"]), None, ""),
    ("linear-nan-val-features", lambda: _probe(val=_with_nan(_features(6, 1)[0])), NonFiniteError, "linear probe: val features"),
    ("linear-nan-learning-rate", lambda: _probe(lrs=(float("nan"),)), ValueError, "--learning-rates"),
    ("linear-zero-epochs", lambda: _probe(epochs=0), ValueError, "epochs (0)"),
    ("linear-diverged-head", lambda: _probe(train=_features()[0] * 1e30, lrs=(1e10,)), NonFiniteError, "heads diverged"),
    ("linear-huge-labels", lambda: _same(
        _probe, {}, {"labels": torch.tensor([0, 1, HUGE_LABEL])}, lambda r: r.val_top1), None, ""),
    ("online-nan-weight", lambda: _online(_set("blocks.0.attn.qkv.weight", float("nan"))), NonFiniteError,
     "online evaluation: the cls features of evaluation.knn_train"),
    ("online-huge-labels", lambda: _online(huge=True), None, ""),
    ("collapse-report-nan", lambda: collapse_report(_with_nan(torch.randn(50, 8))), NonFiniteError, "1 of 50 images"),
    ("segmentation-nan-weight", lambda: _segmentation(poison=True), NonFiniteError, "segmentation: patch features"),
    ("segmentation-all-ignored-batch", lambda: _segmentation(all_ignored_first=True), None, ""),
    ("segmentation-zero-iterations", lambda: train_segmentation_head(
        _vit(), LinearSegmentationHead(16, 3), [], n_layers=1, iterations=0, batch_size=1, lr=1e-3,
        device=torch.device("cpu")), ValueError, "iterations (0)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "error", "fragment"), LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_case(name: str, call: Callable[[], Any], error: type[BaseException] | None, fragment: str) -> None:
    if error is None:
        call()
        return
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value), str(raised.value)
