"""Tests mirror the package: ``dinolite/<package>/<module>.py`` is specified by ``tests/<package>/test_<module>.py``.

A reader looking for what a module promises opens one file. Every module of the covered packages has its
mirror, or is listed in ``NO_BEHAVIOUR`` with the reason it has none: declarations only (exception
classes, dataclasses with defaults). That claim is checked: such a module defines no function or method,
so a function added to it later needs a mirror too. Topic files that cross modules (``test_hostile_*``,
``test_distributed_*``, end-to-end round trips) are welcome beside the mirrors; they do not replace them.

pytest's default import mode needs every test file's basename to be unique across ``tests/`` (test
folders are not packages), so where ``test_<module>.py`` is taken by another package (``metrics.py`` in
both ``eval`` and ``monitor``) the mirror is ``tests/<package>/test_<package>_<module>.py``.

A new module in a covered package without a mirror fails ``test_every_module_has_its_mirror``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("checkpoint", "config", "data", "distributed", "eval", "export", "losses", "models")

NO_BEHAVIOUR: dict[str, str] = {
    "checkpoint/errors.py": "exception classes; each is raised and matched in the tests of the module raising it",
    "export/errors.py": "exception classes; raised and matched in tests/export/",
    "config/schema.py": "the config dataclasses and their defaults; tests/config/test_loading.py checks "
    "default.yaml names every key, and test_validation.py the rules applied to them",
}


def _modules() -> list[str]:
    return sorted(
        f"{package}/{path.name}"
        for package in PACKAGES
        for path in (REPO / "dinolite" / package).glob("*.py")
        if path.name != "__init__.py"
    )


def _mirror(module: str) -> Path:
    """``tests/<package>/test_<module>.py``, or ``test_<package>_<module>.py`` when that basename is taken."""
    package, name = module.split("/")
    plain = REPO / "tests" / package / f"test_{name}"
    qualified = plain.with_name(f"test_{package}_{name}")
    return qualified if qualified.is_file() and not plain.is_file() else plain


def test_every_module_has_its_mirror() -> None:
    assert len(_modules()) > 60  # the walk found the packages
    missing = [m for m in _modules() if not _mirror(m).is_file() and m not in NO_BEHAVIOUR]
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


@pytest.mark.parametrize("module", sorted(NO_BEHAVIOUR))
def test_each_entry_names_an_existing_module_without_a_mirror(module: str) -> None:
    assert (REPO / "dinolite" / module).is_file(), f"dinolite/{module} is gone: remove its entry"
    assert not _mirror(module).is_file(), f"{_mirror(module).relative_to(REPO)} exists now: remove the entry"


@pytest.mark.parametrize("module", sorted(NO_BEHAVIOUR))
def test_modules_without_behaviour_define_no_function(module: str) -> None:
    tree = ast.parse((REPO / "dinolite" / module).read_text())
    functions = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not functions, f"dinolite/{module} defines {functions}: it has behaviour now and needs a mirror"
