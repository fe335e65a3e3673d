"""dinolite/extras.py: a missing optional dependency names the extra that installs it."""

from __future__ import annotations

import json

import pytest

from dinolite.extras import EXTRAS, MissingExtraError, optional_import


def test_an_installed_module_is_returned() -> None:
    assert optional_import("json", extra="viz", purpose="reading") is json


def test_a_missing_module_names_its_package_the_purpose_and_the_pip_line() -> None:
    with pytest.raises(MissingExtraError) as error:
        optional_import("no_such_pkg_dinolite.sub", extra="slurm", purpose="Slurm submission")
    message = str(error.value)
    assert message.startswith("Slurm submission needs the Python package 'no_such_pkg_dinolite'")
    assert message.endswith("pip install 'dinolite[slurm]'")
    assert isinstance(error.value, ImportError) and isinstance(error.value.__cause__, ImportError)


def test_an_unknown_extra_is_a_programming_error_listing_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown extra 'plots'; known: slurm, viz"):
        optional_import("json", extra="plots", purpose="x")


def test_every_extra_installs_something() -> None:
    assert all(EXTRAS.values()) and {"slurm", "viz", "onnx", "hub"} <= EXTRAS.keys()
