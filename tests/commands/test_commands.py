"""One module per command: build_parser(), main(argv) -> int, `python -m dinolite.commands.<name>`, and
the console script dinolite-<name> pointing at that main."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from tests.doc_examples import console_scripts

ROOT = Path(__file__).resolve().parents[2]
COMMANDS_DIR = ROOT / "dinolite" / "commands"
HELPERS = {"__init__", "eval_common"}  # the package docstring; the options the four eval commands share
COMMANDS = sorted(p.stem for p in COMMANDS_DIR.glob("*.py") if p.stem not in HELPERS)
WITHOUT_CONSOLE_SCRIPT = {"summary"}  # python -m dinolite.commands.summary only


def test_the_commands_are_the_documented_ones():
    assert COMMANDS == sorted(
        [
            "train",
            "slurm",
            "lab",
            "knn",
            "linear",
            "segmentation",
            "visualize",
            "attention_segmentation",
            "export",
            "shards",
            "info",
            "summary",
            "plan",
            "train_tokenizer",
        ]
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_a_parser_a_main_and_runs_under_python_dash_m(name):
    module = importlib.import_module(f"dinolite.commands.{name}")
    assert callable(module.build_parser) and module.build_parser().format_help()
    assert list(inspect.signature(module.main).parameters) == ["argv"]
    assert inspect.signature(module.main).parameters["argv"].default is None
    source = (COMMANDS_DIR / f"{name}.py").read_text()
    assert source.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())'), name


def test_console_scripts_call_the_command_modules():
    scripts = console_scripts()
    expected = {
        # a module's underscores are hyphens in its script: attention_segmentation -> dinolite-attention-segmentation
        f"dinolite-{name.replace('_', '-')}": f"dinolite.commands.{name}:main"
        for name in COMMANDS
        if name not in WITHOUT_CONSOLE_SCRIPT
    }
    assert scripts == expected
