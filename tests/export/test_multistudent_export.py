"""Each student of a multi-student distillation run, evaluated and exported on its own (``--student NAME``).

Eval and export read the students' architectures from ``state.json``'s method record (they never import the
trainer); a multi-student run needs ``--student``, a misspelt name gets the nearest one, a one-student run
refuses it; an export records its student and an eval asking another student of it is refused; the kNN
feature cache keeps the students apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.commands.export import main as export_main
from dinolite.commands.knn import main as knn_main
from dinolite.eval.backbone import BackboneError, load_any_backbone
from dinolite.export.consolidate import consolidate_checkpoint
from dinolite.train.loop import train
from tests.methods.test_every_method import random_image_stream
from tests.train.methods.distillation_helpers import distil_config

TWO_STUDENTS = "distillation.students=[{name: narrow, embed_dim: 16, num_heads: 2, depth: 3}, {name: wide}]"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("multistudent")
    multi, single = tmp / "multi", tmp / "single"
    train(
        distil_config("random", TWO_STUDENTS, f"train.output_dir={multi}", "optim.epochs=1"),
        batches=random_image_stream,
    )
    train(distil_config("random", f"train.output_dir={single}", "optim.epochs=1"), batches=random_image_stream)
    return {"multi": multi, "single": single, "tmp": tmp}


@pytest.mark.parametrize("network", ["teacher", "student"])
@pytest.mark.parametrize(("student", "width", "depth"), [("narrow", 16, 3), ("wide", 32, 2)])
def test_each_student_consolidates_at_its_own_size(runs, network: str, student: str, width: int, depth: int):
    exported = consolidate_checkpoint(runs["multi"], model=network, student=student)
    assert (exported.spec.embed_dim, exported.spec.depth) == (width, depth)
    assert exported.spec.source == network and exported.spec.extra["student"] == student
    saved = load_consolidated_state_dict(runs["multi"], network, f"{student}.backbone")
    assert exported.backbone.keys() == saved.keys() and all(torch.equal(exported.backbone[k], saved[k]) for k in saved)
    backbone = load_any_backbone(runs["multi"], network=network, student=student)
    assert backbone.embed_dim == width and all(torch.equal(backbone.state_dict()[k], saved[k]) for k in saved)


def test_with_heads_brings_the_students_own_heads_and_the_shared_centres(runs):
    exported = consolidate_checkpoint(runs["multi"], with_heads=True, student="narrow")
    heads = load_consolidated_state_dict(runs["multi"], "teacher", "narrow.dino_head")
    assert {k for k in exported.heads if k.startswith("dino_head.")} == {f"dino_head.{k}" for k in heads}
    assert exported.heads["dino_head.mlp.0.weight"].shape[1] == 16  # the narrow student's width
    assert "extra.dino_loss.center" in exported.heads and exported.spec.extra["heads"] == ["dino_head"]


def test_a_multi_student_run_needs_a_student_and_names_them(runs):
    with pytest.raises(
        ValueError, match=r"multi-student distillation run of 2 students \(narrow, wide\).*--student NAME"
    ):
        consolidate_checkpoint(runs["multi"])
    with pytest.raises(ValueError, match=r"--student narow: no such student.*did you mean 'narrow'"):
        consolidate_checkpoint(runs["multi"], student="narow")
    with pytest.raises(BackboneError, match="--student NAME"):
        load_any_backbone(runs["multi"])


def test_a_one_student_run_is_read_as_before_and_refuses_student(runs):
    assert consolidate_checkpoint(runs["single"]).spec.embed_dim == 32
    assert "student" not in consolidate_checkpoint(runs["single"]).spec.extra
    with pytest.raises(ValueError, match="one-student distillation run; drop --student"):
        consolidate_checkpoint(runs["single"], student="narrow")


def test_the_export_cli_writes_one_student_and_the_export_remembers_which(runs):
    out = runs["tmp"] / "narrow.safetensors"
    assert export_main(["--checkpoint", str(runs["multi"]), "--output", str(out), "--student", "narrow"]) == 0
    backbone = load_any_backbone(out, student="narrow")
    assert backbone.embed_dim == 16 and backbone.spec.source == "teacher"  # the narrow student's EMA
    with pytest.raises(BackboneError, match="--student wide: .* holds student 'narrow'"):
        load_any_backbone(out, student="wide")
    raw = runs["tmp"] / "narrow_raw.safetensors"
    argv = ["--checkpoint", str(runs["multi"]), "--output", str(raw), "--student", "narrow", "--network", "student"]
    assert export_main(argv) == 0 and load_any_backbone(raw).spec.source == "student"
    # alone, --student keeps its meaning (the raw student network): a multi-student run then needs a name
    alone = ["--checkpoint", str(runs["multi"]), "--output", str(runs["tmp"] / "x.safetensors"), "--student"]
    assert export_main(alone) != 0


def _folder(root: Path, per_class: int, seed: int) -> Path:
    """Three classes of 16x16 images, mostly red, green or blue."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
            img[..., c] += 180
            Image.fromarray(img).save(root / f"class{c}" / f"{i}.png")
    return root


def test_the_knn_cli_evaluates_the_student_it_is_given_and_caches_each_apart(runs, capsys):
    train_dir, val_dir = _folder(runs["tmp"] / "train", 6, 0), _folder(runs["tmp"] / "val", 2, 1)
    cache = runs["tmp"] / "cache"
    results = {}
    for student in ("narrow", "wide"):
        out = runs["tmp"] / f"knn_{student}.json"
        argv = [
            "--backbone",
            str(runs["multi"]),
            "--student",
            student,
            "--train",
            str(train_dir),
            "--val",
            str(val_dir),
        ]
        argv += ["--ks", "1", "--num-workers", "0", "--no-progress", "--cache-dir", str(cache), "--output", str(out)]
        assert knn_main(argv) == 0
        results[student] = json.loads(out.read_text())
    assert "features from cache" not in capsys.readouterr().out  # the wide student did not get the narrow's
    assert len(list(cache.glob("*.safetensors"))) == 4  # train and val features of each student
    assert knn_main(["--backbone", str(runs["multi"]), "--train", str(train_dir), "--val", str(val_dir)]) != 0
