"""Command-line habits every console script keeps: flags anywhere among the key=value overrides, plain-text
--help (no Sphinx markup), each program naming itself, --dry-run refusing what training refuses, and the
start-up notes about a preset's explicit model sizes that an arch override leaves in place."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dinolite.commands import info, summary, train

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(
    p.stem for p in (ROOT / "dinolite" / "commands").glob("*.py") if p.stem not in {"__init__", "eval_common"}
)
SPHINX_MARKUP = re.compile(r"``|:[a-z]+:`")


def test_train_takes_flags_between_and_after_overrides(capsys):
    assert train.main(["train.max_iterations=3", "--dry-run", "optim.base_lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "max_iterations: 3" in out and "base_lr: 0.001" in out


@pytest.mark.parametrize("command", [info, summary])
def test_info_and_summary_take_flags_between_overrides(command, capsys):
    assert command.main(["student.depth=2", "--config", "demo", "optim.base_lr=1e-3"]) == 0
    assert "depth 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size_per_gpu=1", "KoLeo needs at least 2 images per GPU"),
        ("train.method=simclrr", "did you mean 'simclr'?"),
    ],
)
def test_dry_run_refuses_what_training_refuses_at_start_up(override, message, capsys):
    assert train.main(["--dry-run", override]) == 1
    assert message in capsys.readouterr().err


def test_dry_run_checks_the_model_of_every_size_without_building_it(capsys):
    # vitg14: 1.1 billion parameters, checked on the meta device (nothing allocated)
    args = ["--config", "vitg14", "--dry-run", "data.source=[digits]", "evaluation.knn_at_end=false"]
    assert train.main(args) == 0
    assert "arch: vit_giant2" in capsys.readouterr().out


def test_an_arch_override_names_each_explicit_size_it_leaves_in_place(capsys):
    assert train.main(["--config", "demo", "student.arch=vit_small", "--dry-run"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: student.")]
    assert len(notes) == 3
    assert "student.embed_dim=96" in notes[0] and "embed_dim 384" in notes[0]
    assert "student.depth=4" in notes[1] and "depth 12" in notes[1]


def test_no_note_when_the_sizes_are_set_with_the_arch(capsys):
    sizes = ["student.embed_dim=null", "student.depth=null", "student.num_heads=null"]
    assert train.main(["student.arch=vit_small", *sizes, "--dry-run"]) == 0
    assert "note: student." not in capsys.readouterr().err
    assert info.main(["student.arch=vit_small", "student.depth=4"]) == 0
    err = capsys.readouterr().err
    assert "student.embed_dim=96" in err and "student.depth=" not in err


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_plain_text(name):
    text = importlib.import_module(f"dinolite.commands.{name}").build_parser().format_help()
    assert not SPHINX_MARKUP.search(text), SPHINX_MARKUP.search(text)


def test_lab_help_names_the_program_it_was_started_as():
    script = Path(sys.executable).parent / "dinolite-lab"
    if not script.exists():
        pytest.skip("console scripts not installed")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: dinolite-lab ")
