"""Every test file under tests/ is collected: no folder is skipped for its name.

pytest's default ``norecursedirs`` skips folders named ``build``, ``dist``, ``venv``, ``CVS`` ... at any
depth, so ``tests/dist`` (the tests of ``dinolite/dist``, now ``dinolite/distributed``) was silently never
run. The project sets its own list in pyproject.toml; these tests keep it from skipping a test folder.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

TESTS_ROOT = Path(__file__).resolve().parent
# Folder names pytest skips by default that a test folder may well carry (a package called dist, build, ...).
DEFAULT_SKIPPED_NAMES = ("build", "dist", "venv", "CVS", "_darcs", "node_modules", "{arch}")


def _skipped_by(name: str, config: pytest.Config) -> list[str]:
    """The ``norecursedirs`` patterns that make pytest skip a folder called ``name``."""
    return [pattern for pattern in config.getini("norecursedirs") if fnmatch.fnmatch(name, pattern)]


def _folders_with_tests() -> list[Path]:
    return sorted({path.parent for path in TESTS_ROOT.rglob("test_*.py") if "__pycache__" not in path.parts})


def test_tests_are_collected_from_the_tests_folder(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getini("testpaths") == ["tests"]
    assert "test_*.py" in pytestconfig.getini("python_files")


def test_no_folder_holding_tests_is_skipped(pytestconfig: pytest.Config) -> None:
    skipped = {}
    for folder in _folders_with_tests():
        for part in folder.relative_to(TESTS_ROOT.parent).parts:
            if patterns := _skipped_by(part, pytestconfig):
                skipped[str(folder.relative_to(TESTS_ROOT.parent))] = patterns
    assert len(_folders_with_tests()) > 10  # the walk found the suite
    assert not skipped, f"pytest never enters these test folders (norecursedirs patterns): {skipped}"


@pytest.mark.parametrize("name", DEFAULT_SKIPPED_NAMES)
def test_build_output_names_are_not_skipped(pytestconfig: pytest.Config, name: str) -> None:
    """A future tests/<name>/ is collected even though pytest's default list skips that name."""
    assert not _skipped_by(name, pytestconfig), f"tests/{name}/ would be skipped by norecursedirs"
