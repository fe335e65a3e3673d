"""Every command-line entrypoint: ``--help`` shows the defaults, bad input is one ``error:`` line.

Called in process (``main(argv)``), as the console scripts and ``python -m`` do.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(relative: str):
    spec = importlib.util.spec_from_file_location(f"entry_{Path(relative).stem}", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENTRYPOINTS = {
    "eval/knn.py": lambda: _script("eval/knn.py"),
    "eval/linear.py": lambda: _script("eval/linear.py"),
    "eval/segmentation.py": lambda: _script("eval/segmentation.py"),
    "eval/visualize.py": lambda: _script("eval/visualize.py"),
    "eval/attention_segmentation.py": lambda: _script("eval/attention_segmentation.py"),
    "launch/local.py": lambda: importlib.import_module("dinolite.commands.train"),
    "launch/slurm.py": lambda: _script("launch/slurm.py"),
    "launch/lab.py": lambda: _script("launch/lab.py"),
    "dinolite.commands.export": lambda: importlib.import_module("dinolite.commands.export"),
    "dinolite.commands.shards": lambda: importlib.import_module("dinolite.commands.shards"),
    "dinolite.commands.info": lambda: importlib.import_module("dinolite.commands.info"),
    "dinolite.commands.summary": lambda: importlib.import_module("dinolite.commands.summary"),
}


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_help_lists_every_default(name, capsys):
    module = ENTRYPOINTS[name]()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())  # past the usage line
    # Every option with a real default shows it in its own entry (None: unset, False: flag off). Each entry
    # is rendered alone by the parser's formatter (aliases such as DINOv2's --ngpus sit inside entries), and
    # must appear in the printed help as rendered.
    parser = module.build_parser()
    for action in parser._actions:
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.dest != "help"
            and action.help != argparse.SUPPRESS  # hidden: DINOv2 flags refused with a message
        ):
            formatter = parser._get_formatter()
            formatter.add_argument(action)
            entry = " ".join(formatter.format_help().split())
            assert f"(default: {action.default})" in entry, (action.option_strings, entry)
            assert entry in help_text, (action.option_strings, entry)


def _bad(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    missing = str(tmp_path / "missing")
    return {
        "eval/knn.py": (["--backbone", missing, "--train", missing, "--val", missing], "--train: "),
        "eval/linear.py": (["--backbone", missing, "--train", missing, "--val", missing], "--train: "),
        "eval/segmentation.py": (["--backbone", missing, "--data", missing, "--num-classes", "3"], missing),
        "eval/visualize.py": (
            ["--backbone", missing, "--images", missing, "--output", str(tmp_path / "v")],
            "--images",
        ),
        "eval/attention_segmentation.py": (
            ["--backbone", missing, "--data", missing, "--output", str(tmp_path / "a")],
            "--data: ",
        ),
        "launch/local.py": (["--config", "no_such_preset"], "unknown config preset 'no_such_preset'"),
        "launch/slurm.py": (
            ["--entry", "eval/knn.py", "--dry-run", "--", "--backbone", missing],
            "arguments after `--` for",
        ),
        "launch/lab.py": (["--matrix", missing], "unknown matrix"),
        "dinolite.commands.export": (
            ["--checkpoint", missing, "--output", str(tmp_path / "x.safetensors")],
            "no complete checkpoint",
        ),
        "dinolite.commands.shards": ([missing, str(tmp_path / "shards")], missing),
        "dinolite.commands.info": (["--config", "no_such_preset"], "unknown config preset 'no_such_preset'"),
        "dinolite.commands.summary": (["--config", "demo", "train.method=dinov3"], "did you mean 'dinov2'"),
    }


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_bad_input_is_one_error_line(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # launch/slurm.py --entry eval/knn.py is relative to the checkout
    argv, fragment = _bad(tmp_path)[name]
    code = ENTRYPOINTS[name]().main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
