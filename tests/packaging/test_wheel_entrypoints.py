"""Console scripts, ``python -m`` entries, extras and version pairing, as setup.cfg declares them.

The installed wheel itself is exercised by .ci/run (a fresh venv outside the clone runs the demo's first
iterations and an evaluation through the console scripts); these tests check the same entry functions
in-process.
"""

from __future__ import annotations

import argparse
import configparser
import importlib
import runpy
import sys
from pathlib import Path

import pytest

from dinolite import compat, extras

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SCRIPTS = {
    "dinolite-train",
    "dinolite-slurm",
    "dinolite-knn",
    "dinolite-linear",
    "dinolite-segmentation",
    "dinolite-visualize",
    "dinolite-attention-segmentation",
    "dinolite-export",
    "dinolite-shards",
    "dinolite-info",
    "dinolite-lab",
    "dinolite-plan",
    "dinolite-train-tokenizer",
}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _console_scripts() -> dict[str, str]:
    lines = _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=")) for line in lines)


SCRIPTS = _console_scripts()


def _help_of(target: str, monkeypatch, capsys) -> tuple[str, list[argparse.ArgumentParser]]:
    """Run the entry function with ``--help``; return the text and the parser(s) that printed it."""
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    printed: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def recording_print_help(self, file=None):
        printed.append(self)
        original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", recording_print_help)
    with pytest.raises(SystemExit) as exit_info:
        func(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out, printed


def _option_block(help_text: str, option: str) -> str:
    """The lines of ``--help`` that describe ``option`` (its line up to the next option or section)."""
    lines = help_text.splitlines()
    first = lines.index("options:")  # skip the description, which may mention options too
    start = next(
        i
        for i, line in enumerate(lines)
        if i > first
        and line.startswith("  ")
        and (line.strip().startswith(option + " ") or line.strip() == option or line.strip().startswith(option + ","))
    )
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    ") or line.strip().startswith("-"):
            break
        block.append(line)
    return " ".join(block)


def test_setup_cfg_declares_every_console_script():
    assert set(SCRIPTS) == EXPECTED_SCRIPTS


@pytest.mark.parametrize("script", sorted(EXPECTED_SCRIPTS))
def test_console_script_help_shows_every_default(script, monkeypatch, capsys):
    text, parsers = _help_of(SCRIPTS[script], monkeypatch, capsys)
    assert text.startswith("usage:") and len(parsers) == 1
    for action in parsers[0]._actions:
        default = action.default
        if not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []:
            continue
        block = _option_block(text, action.option_strings[0])
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        assert "default" in block.lower(), f"{script} --help: {action.option_strings[-1]} hides its default {shown!r}"
    if script == "dinolite-knn":
        assert "(default: [10, 20, 100, 200])" in _option_block(text, "--ks")


# `python -m NAME` for each console script: its command module
DASH_M = {
    "dinolite-train": "dinolite.commands.train",
    "dinolite-slurm": "dinolite.commands.slurm",
    "dinolite-knn": "dinolite.commands.knn",
    "dinolite-linear": "dinolite.commands.linear",
    "dinolite-segmentation": "dinolite.commands.segmentation",
    "dinolite-visualize": "dinolite.commands.visualize",
    "dinolite-attention-segmentation": "dinolite.commands.attention_segmentation",
    "dinolite-export": "dinolite.commands.export",
    "dinolite-shards": "dinolite.commands.shards",
    "dinolite-info": "dinolite.commands.info",
    "dinolite-lab": "dinolite.commands.lab",
    "dinolite-plan": "dinolite.commands.plan",
    "dinolite-train-tokenizer": "dinolite.commands.train_tokenizer",
}


@pytest.mark.parametrize("script", sorted(EXPECTED_SCRIPTS))
def test_python_dash_m_runs_the_same_command(script, monkeypatch, capsys):
    """``python -m <module> --help`` (runpy, as the interpreter does) prints the console script's help."""
    module_name = DASH_M[script]
    expected, _ = _help_of(SCRIPTS[script], monkeypatch, capsys)
    monkeypatch.setattr(sys, "argv", [module_name, "--help"])
    for name in [m for m in sys.modules if m == module_name or m == f"{module_name}.__main__"]:
        monkeypatch.delitem(sys.modules, name)  # runpy warns when the module was imported already
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module_name, run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    got = capsys.readouterr().out
    assert got.split("\n\n", 1)[1] == expected.split("\n\n", 1)[1]  # the same apart from the usage line


def test_clone_wrappers_run_the_package_functions():
    """launch/ and eval/ stay thin: each wrapper's main is the package's."""
    wrappers = {
        "launch/local.py": "dinolite.commands.train",
        "launch/slurm.py": "dinolite.commands.slurm",
        "eval/knn.py": "dinolite.commands.knn",
        "eval/linear.py": "dinolite.commands.linear",
        "eval/segmentation.py": "dinolite.commands.segmentation",
        "eval/visualize.py": "dinolite.commands.visualize",
        "eval/attention_segmentation.py": "dinolite.commands.attention_segmentation",
    }
    for path, module_name in wrappers.items():
        namespace = runpy.run_path(str(ROOT / path), run_name="wrapper")
        assert namespace["main"] is importlib.import_module(module_name).main, path
        assert len((ROOT / path).read_text().splitlines()) < 25, f"{path} is no longer a thin wrapper"


def test_presets_ship_inside_the_package():
    patterns = [p.strip() for p in _setup_cfg()["options.package_data"]["dinolite.configs"].split(",")]
    configs = ROOT / "dinolite" / "configs"
    shipped = sorted(configs.rglob("*.yaml"))
    for path in shipped:  # every preset, sub-folders included, is matched by a package_data pattern
        relative = path.relative_to(configs)
        assert any(relative.match(p) or (p.startswith("**/") and relative.match(p[3:])) for p in patterns), relative
    assert {p.stem for p in shipped} >= {"default", "demo", "vitl16"}
    assert (ROOT / "configs").resolve() == (ROOT / "dinolite" / "configs").resolve()  # the clone's link


def test_extras_in_setup_cfg_match_the_error_messages():
    declared = _setup_cfg()["options.extras_require"]
    for extra, packages in extras.EXTRAS.items():
        listed = [line.strip() for line in declared[extra].splitlines() if line.strip() and not line.startswith("#")]
        assert listed == list(packages), extra
    install_requires = _setup_cfg()["options"]["install_requires"]
    for optional in ("submitit", "matplotlib", "fvcore", "webdataset", "huggingface_hub", "onnx"):
        assert f"\n    {optional}" not in install_requires, f"{optional} must be an extra, not a core dependency"
    assert "webdataset" in declared["test"]


def _forward_macs_of_a_linear_layer():
    import torch

    info = importlib.import_module("dinolite.models.info")
    return info.forward_macs(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))


@pytest.mark.parametrize(
    ("module", "extra", "importer"),
    [
        ("submitit", "slurm", lambda: importlib.import_module("dinolite.jobs.slurm")),
        ("matplotlib", "viz", lambda: importlib.import_module("dinolite.eval.visualize_figures")._pyplot()),
        ("fvcore", "flops", _forward_macs_of_a_linear_layer),
        ("onnx", "onnx", lambda: importlib.import_module("dinolite.export.writers")._add_onnx_metadata(Path("x"), {})),
        (
            "huggingface_hub",
            "hub",
            lambda: importlib.import_module("dinolite.export.hub").download_hub_source("hf-hub:a/b"),
        ),
        ("wandb", "wandb", lambda: importlib.import_module("dinolite.jobs.trackers").WandbTracker(None, Path("."))),
        ("mlflow", "mlflow", lambda: importlib.import_module("dinolite.jobs.trackers").MlflowTracker(None, Path("."))),
    ],
)
def test_missing_optional_dependency_names_its_extra(module, extra, importer, monkeypatch):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".") or m == "dinolite.jobs.slurm"]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(extras.MissingExtraError, match=rf"pip install 'dinolite\[{extra}\]'"):
        importer()


def test_slurm_launcher_help_needs_no_submitit_but_submitting_does(monkeypatch, capsys):
    launch = importlib.import_module("dinolite.commands.slurm")
    monkeypatch.setattr(launch, "slurm", None)
    monkeypatch.setattr(
        launch, "_MISSING_SUBMITIT", extras.MissingExtraError("needs pip install 'dinolite[slurm]'"), raising=False
    )
    assert launch.main(["--config", "demo", "--dry-run"]) == 2
    assert "dinolite[slurm]" in capsys.readouterr().err


def test_torch_and_torchvision_are_paired():
    import torch
    import torchvision

    compat.check_torch_torchvision(torch.__version__, torchvision.__version__)  # this environment's pair
    compat.check_torch_torchvision("2.6.0+cu124", "0.21.0")
    with pytest.raises(compat.IncompatibleVersionsError, match=r"torchvision==0\.29\.\*"):
        compat.check_torch_torchvision("2.14.1", "0.28.0")
    with pytest.raises(compat.IncompatibleVersionsError, match="not supported"):
        compat.check_torch_torchvision("2.5.1", "0.20.1")
    # the table and setup.cfg's bounds agree
    install_requires = _setup_cfg()["options"]["install_requires"]
    (lo_t, lo_v), (hi_t, hi_v) = (min(compat.TORCHVISION_FOR_TORCH.items()), max(compat.TORCHVISION_FOR_TORCH.items()))
    assert f"torch>={lo_t[0]}.{lo_t[1]},<{hi_t[0]}.{hi_t[1] + 1}" in install_requires
    assert f"torchvision>={lo_v[0]}.{lo_v[1]},<{hi_v[0]}.{hi_v[1] + 1}" in install_requires


def test_license_file_matches_setup_cfg():
    assert _setup_cfg()["metadata"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
