"""Every fenced example of docs/interop.md runs, in order, from a scratch directory, offline.

The fences follow README.md's convention (tests/doc_examples.py, the README test) plus the ``hub`` tag;
docs/interop.md documents them at its end. Commands run in this process through their console scripts'
entry points (the argv as written), ``python`` blocks as scripts (``runpy``), both from the scratch
directory: the Hub client is replaced here by offline stand-ins, and the whole page runs in well under a
minute (a fresh interpreter per command would add seconds of imports each).

What stands in for what the page names but this machine does not have:

- ``hf-hub:ORG/NAME`` sources: a huggingface_hub cache holding a small randomly initialised model of the
  same library and layout (2 blocks, DINOv2's 518 px grid), read with ``HF_HUB_OFFLINE=1``;
- ``--push-to-hub``: ``HfApi.create_repo`` / ``upload_folder`` record their arguments (nothing leaves the
  machine; the HTTP upload, credentials and the Hub's answer are not exercised);
- released files and folders the page names (``dinov2_vits14_pretrain.pth``, DINOv2's ``vitl16_short.yaml``,
  ``DATA/train``, ``/data/imagenet``, ``teacher.safetensors``): the smallest stand-in the command accepts.
"""

from __future__ import annotations

import importlib
import re
import runpy
import shlex
import warnings
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

from tests.doc_examples import ROOT, commands, console_scripts, fenced_blocks, prepare
from tests.offline_hub import cache_repository, read_cache_offline, record_uploads

PAGE = ROOT / "docs" / "interop.md"
FIXTURES = ROOT / "tests" / "fixtures" / "dinov2"
RUN_KINDS = {"bash", "python", "bash gpu", "bash cluster"}
SIZE = 518  # DINOv2's released checkpoints' resolution
IMAGENET = "/data/imagenet"

# What each command must print besides exiting 0 (the part of the page's promise a clean exit does not show).
EXPECTED_OUTPUT = {
    "dinolite-train --config vits14_continue": ["student.num_register_tokens=4 from student.pretrained_weights"],
    "dinolite-knn": ["kNN on 12 train / 6 val images", "(k=20, the DINO protocol"],
    "dinolite-train --config-file": ["compute_precision: fp16", "sharding_strategy: shard_grad_op"],
    "dinolite-slurm": ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --time=2800"],
}


def block_kind(info: str) -> tuple[str, bool]:
    """``("bash gpu", True)`` for ``bash gpu hub``: the README kind, and whether the block reaches the Hub."""
    words = info.split()
    return " ".join(w for w in words if w != "hub"), "hub" in words


def needs_the_hub(body: str) -> bool:
    code = re.sub(r"(^|\s)#.*", "", body, flags=re.MULTILINE)  # a comment naming the Hub does not reach it
    return "hf-hub:" in code or "--push-to-hub" in code


# ------------------------------------------------------------------------------------------- stand-ins
def _images(folder: Path, classes: tuple[str, ...], per_class: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            # the classes differ in mean brightness, so a kNN on any features has something to find
            pixels = (torch.rand(40, 40, 3, generator=generator) * 128 + 100 * label).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / name / f"{index}.png")


def _data(scratch: Path) -> None:
    _images(scratch / "DATA" / "train", ("a", "b"), per_class=6, seed=0)
    _images(scratch / "DATA" / "val", ("a", "b"), per_class=3, seed=1)


def _imagenet(scratch: Path) -> None:
    _images(scratch / "imagenet" / "train", ("n01440764", "n01443537"), per_class=1, seed=2)


def _vitl16_short(scratch: Path) -> None:
    target = scratch / "dinov2" / "configs" / "train" / "vitl16_short.yaml"
    target.parent.mkdir(parents=True)
    target.write_text((FIXTURES / "vitl16_short.yaml").read_text())


def _dinov2_vits14_pth(scratch: Path, registers: int = 0, name: str = "dinov2_vits14_pretrain.pth") -> None:
    # DINOv2's plain state dict at 518 px, ViT-S/14 whole (the entry checks every architectural field)
    from dinolite.models import DinoVisionTransformer

    torch.manual_seed(5)
    model = DinoVisionTransformer(
        img_size=SIZE,
        patch_size=14,
        embed_dim=384,
        depth=12,
        num_heads=6,
        init_values=1e-5,
        num_register_tokens=registers,
    )
    torch.save(model.state_dict(), scratch / name)


def _dinov2_vits14_reg4_pth(scratch: Path) -> None:
    _dinov2_vits14_pth(scratch, registers=4, name="dinov2_vits14_reg4_pretrain.pth")


def _teacher_export(scratch: Path) -> None:
    from dinolite.commands.export import main

    assert (
        main(["--checkpoint", str(scratch / "output" / "demo"), "--output", str(scratch / "teacher.safetensors")]) == 0
    )


def _timm_reg4_release(folder: Path) -> None:
    import timm

    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=SIZE, depth=2, num_classes=0)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)


def _transformers_small_release(folder: Path) -> None:
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=SIZE, patch_size=14
    )
    torch.manual_seed(2)
    transformers.Dinov2Model(config).save_pretrained(str(folder))
    # the release's preprocessing (facebook/dinov2-small's preprocessor_config.json): evaluation at 224 px
    transformers.BitImageProcessor(
        size={"shortest_edge": 256},
        resample=3,  # bicubic
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(folder))


FILE_STANDINS: dict[str, Callable[[Path], None]] = {
    "DATA/train": _data,
    "dinov2/configs/train/vitl16_short.yaml": _vitl16_short,
    IMAGENET: _imagenet,
    "dinov2_vits14_pretrain.pth": _dinov2_vits14_pth,
    "dinov2_vits14_reg4_pretrain.pth": _dinov2_vits14_reg4_pth,
    "teacher.safetensors": _teacher_export,
}
HUB_STANDINS: dict[str, Callable[[Path], None]] = {
    "timm/vit_small_patch14_reg4_dinov2.lvd142m": _timm_reg4_release,
    "facebook/dinov2-small": _transformers_small_release,
}


# ------------------------------------------------------------------------------------------- running
def _substituted(text: str, scratch: Path) -> str:
    return text.replace("/path/to/dinolite", str(ROOT)).replace(IMAGENET, str(scratch / "imagenet"))


def run_command(command: str, capsys: pytest.CaptureFixture) -> str:
    """One console-script line, through its entry point in this process; what it printed (warnings included)."""
    words = shlex.split(command)
    scripts = console_scripts()
    assert words[0] in scripts, f"docs/interop.md: {command!r} is not a console script of setup.cfg"
    module, _, function = scripts[words[0]].partition(":")
    main = getattr(importlib.import_module(module), function)
    with warnings.catch_warnings(record=True) as notices:
        warnings.simplefilter("always")
        code = main(words[1:])
    captured = capsys.readouterr()
    printed = "\n".join([captured.out, captured.err, *(f"{w.category.__name__}: {w.message}" for w in notices)])
    assert code == 0, f"docs/interop.md: {command}\n{printed[-4000:]}"
    return printed


def run_script(body: str, path: Path) -> None:
    path.write_text(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpy.run_path(str(path), run_name="__main__")


def test_every_block_has_a_known_kind_and_hub_blocks_say_so():
    for info, body in fenced_blocks(PAGE.read_text()):
        kind, hub = block_kind(info)
        assert kind in RUN_KINDS | {"text"}, f"docs/interop.md: unknown fence {info!r} (see the page's end)"
        if kind in RUN_KINDS:
            assert hub == needs_the_hub(body), f"docs/interop.md: fence {info!r} and its Hub use disagree:\n{body}"


def test_every_stand_in_is_named_by_the_page():
    text = PAGE.read_text()
    for name in [*FILE_STANDINS, *HUB_STANDINS]:
        assert name in text, f"{name} is no longer on docs/interop.md: drop its stand-in"


@pytest.mark.slow
def test_interop_examples_run(tmp_path, monkeypatch, capsys):
    for package in ("huggingface_hub", "timm", "transformers"):
        pytest.importorskip(package, reason=f"docs/interop.md's examples use {package} (the `test` extra)")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for repo_id, make in HUB_STANDINS.items():
        make(tmp_path / "releases" / repo_id)
        cache_repository(tmp_path / "hub-cache", repo_id, tmp_path / "releases" / repo_id)
    read_cache_offline(tmp_path / "hub-cache", monkeypatch)
    uploads = record_uploads(monkeypatch)
    monkeypatch.chdir(scratch)
    made: set[str] = set()
    printed = ""  # everything the commands printed so far
    for index, (info, body) in enumerate(fenced_blocks(PAGE.read_text())):
        kind, _ = block_kind(info)
        if kind == "text":  # output of a block above
            for line in body.strip().splitlines():
                assert line in printed, f"docs/interop.md block {index}: printed by no block above it:\n{line}"
            continue
        for name in [n for n in FILE_STANDINS if n in body and n not in made]:
            FILE_STANDINS[name](scratch)
            made.add(name)
        body = _substituted(body, scratch)
        if kind == "python":
            run_script(body, scratch / f"interop_block_{index}.py")
            continue
        for command in [c for line in commands(body) for c in prepare(kind, line)]:
            out = run_command(command, capsys)
            for prefix, expected in EXPECTED_OUTPUT.items():
                if command.startswith(prefix):
                    missing = [e for e in expected if e not in out]
                    assert not missing, f"docs/interop.md: {command} did not print {missing}\n{out[-4000:]}"
            printed += out
    assert made == set(FILE_STANDINS)
    for folder in ("demo-timm", "demo-hf", "demo-hf-upload"):
        assert (scratch / folder / "model.safetensors").is_file(), folder
    # the upload: the repository created private as asked, and the folder just exported sent to it
    assert [name for name, _ in uploads] == ["create_repo", "upload_folder"]
    assert uploads[0][1] == dict(repo_id="ORG/NAME", repo_type="model", private=True, exist_ok=True)
    assert uploads[1][1]["folder_path"] == "demo-hf-upload" and uploads[1][1]["repo_id"] == "ORG/NAME"


def test_optional_arguments_are_passed_and_training_is_shortened():
    assert prepare("bash", "dinolite-export --push-to-hub ORG/NAME [--private]") == [
        "dinolite-export --push-to-hub ORG/NAME --private"
    ]
    assert re.search(r"^dinolite-train train\.max_iterations=2 ", prepare("bash", "dinolite-train")[0])
    assert prepare("bash gpu", "dinolite-train --config vitl16") == ["dinolite-train --config vitl16 --dry-run"]
