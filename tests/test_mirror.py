"""Tests mirror the package: ``dinolite/<path>/<module>.py`` is specified by ``tests/<path>/test_<module>.py``.

One rule for every depth: the folders under ``dinolite/`` are the folders under ``tests/``. So
``dinolite/io.py`` is specified by ``tests/test_io.py``, ``dinolite/train/step.py`` by
``tests/train/test_step.py`` and ``dinolite/train/methods/vicreg.py`` by ``tests/train/methods/test_vicreg.py``.

A reader looking for what a module promises opens one file. Every module of ``dinolite`` has its mirror,
or is listed in ``NO_BEHAVIOUR`` with the reason it has none: declarations only (exception classes,
dataclasses with defaults). That claim is checked: such a module defines no function or method, so a
function added to it later needs a mirror too. Modules that have behaviour but no mirror yet are listed in
``NOT_YET_MIRRORED`` with the reason, so the gap stays visible; an entry fails as soon as its mirror exists.

Topic files that cross modules (``test_hostile_*``,
``test_distributed_*``, end-to-end round trips) are welcome beside the mirrors; they do not replace them.

pytest's default import mode needs every test file's basename to be unique across ``tests/`` (test
folders are not packages), so where ``test_<module>.py`` is taken by another package (``metrics.py`` in
both ``eval`` and ``monitor``) the mirror is ``tests/<path>/test_<package>_<module>.py``, ``<package>`` being
the module's own package (the last folder of ``<path>``).

A new module anywhere in ``dinolite`` without a mirror fails ``test_every_module_has_its_mirror``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dinolite"

NO_BEHAVIOUR: dict[str, str] = {
    "checkpoint/errors.py": "exception classes; each is raised and matched in the tests of the module raising it",
    "export/errors.py": "exception classes; raised and matched in tests/export/",
    "config/schema.py": "the config dataclasses and their defaults; tests/config/test_loading.py checks "
    "default.yaml names every key, and test_validation.py the rules applied to them",
}


_COMMANDS = "another engineer ('journey', issue 25) is editing dinolite/commands: its mirror follows once that lands"
NOT_YET_MIRRORED: dict[str, str] = {
    # dinolite/commands: each command is specified through its console entry point in cross-command files.
    "commands/eval_common.py": f"the eval commands' shared options, in tests/eval/test_hostile_eval.py; {_COMMANDS}",
    "commands/export.py": f"tests/commands/test_export_cli.py (becomes test_export.py); {_COMMANDS}",
    "commands/info.py": f"tests/test_entrypoints.py and tests/models/test_info.py; {_COMMANDS}",
    "commands/knn.py": f"tests/commands/test_eval_cli.py and tests/eval/test_knn_report.py; {_COMMANDS}",
    "commands/lab.py": f"tests/lab/test_lab_end_to_end.py; {_COMMANDS}",
    "commands/linear.py": f"tests/commands/test_eval_cli.py and tests/eval/test_hostile_eval.py; {_COMMANDS}",
    "commands/segmentation.py": f"tests/eval/test_hostile_eval.py and tests/test_cli.py; {_COMMANDS}",
    "commands/summary.py": f"tests/commands/test_commands.py and tests/models/test_info.py; {_COMMANDS}",
    "commands/train.py": f"tests/train/test_demo.py, test_builtin_data_training.py and test_fp16_training.py; {_COMMANDS}",
    "commands/visualize.py": f"tests/eval/test_hostile_eval.py and tests/test_cli.py; {_COMMANDS}",
    # dinolite/lab
    "lab/report_figures.py": "the report's figures, drawn by tests/lab/test_report.py and test_lab_end_to_end.py",
    # dinolite/train
    "train/pretrained.py": "tests/commands/test_export_cli.py (training from an export); 'journey' is editing it",
}


def test_no_module_is_excused_twice() -> None:
    assert not NO_BEHAVIOUR.keys() & NOT_YET_MIRRORED.keys()


def _modules() -> list[str]:
    """Every module of ``dinolite``, as its path under ``dinolite/`` (``io.py``, ``train/methods/vicreg.py``)."""
    return sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")


def _mirror(module: str) -> Path:
    """``tests/<path>/test_<module>.py``, or ``test_<package>_<module>.py`` when that basename is taken."""
    folder, _, name = module.rpartition("/")
    plain = REPO / "tests" / folder / f"test_{name}"
    if not folder:
        return plain
    qualified = plain.with_name(f"test_{folder.rpartition('/')[2]}_{name}")
    return qualified if qualified.is_file() and not plain.is_file() else plain


def test_every_module_has_its_mirror() -> None:
    assert len(_modules()) > 150  # the walk found the packages
    excused = NO_BEHAVIOUR.keys() | NOT_YET_MIRRORED.keys()
    missing = [m for m in _modules() if not _mirror(m).is_file() and m not in excused]
    assert not missing, (
        "modules without tests/<package>/test_<module>.py (write it, or justify an entry in tests/test_mirror.py): "
        + ", ".join(f"dinolite/{m}" for m in missing)
    )


def test_every_mirror_holds_tests() -> None:
    """A mirror is a specification, not a placeholder: it defines at least one test."""
    empty = []
    for module in _modules():
        if _mirror(module).is_file():
            tree = ast.parse(_mirror(module).read_text())
            if not any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body):
                empty.append(str(_mirror(module).relative_to(REPO)))
    assert not empty, f"mirror files without a test: {empty}"


def test_test_file_basenames_are_unique() -> None:
    """Two test files of one name in different folders stop pytest's collection of the whole suite."""
    seen: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files sharing a basename (name one test_<package>_<module>.py): {clashes}"


@pytest.mark.parametrize("module", sorted(NO_BEHAVIOUR) + sorted(NOT_YET_MIRRORED))
def test_each_entry_names_an_existing_module_without_a_mirror(module: str) -> None:
    assert (REPO / "dinolite" / module).is_file(), f"dinolite/{module} is gone: remove its entry"
    assert not _mirror(module).is_file(), f"{_mirror(module).relative_to(REPO)} exists now: remove the entry"


@pytest.mark.parametrize("module", sorted(NO_BEHAVIOUR))
def test_modules_without_behaviour_define_no_function(module: str) -> None:
    tree = ast.parse((REPO / "dinolite" / module).read_text())
    functions = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not functions, f"dinolite/{module} defines {functions}: it has behaviour now and needs a mirror"
