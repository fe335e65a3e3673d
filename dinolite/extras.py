"""Optional dependencies, grouped by purpose into the package's extras (setup.cfg ``extras_require``).

A missing one fails where it is first needed, with the ``pip install`` line that brings it:

    >>> optional_import("submitit", extra="slurm", purpose="Slurm submission")
    MissingExtraError: Slurm submission needs the Python package 'submitit': pip install 'dinolite[slurm]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> the distributions it installs (kept in step with setup.cfg; tests/test_packaging.py checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "slurm": ("submitit",),
    "viz": ("matplotlib",),
    "flops": ("fvcore",),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "hub": ("huggingface_hub",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow-skinny", "sqlalchemy", "alembic"),
    "xformers": ("xformers",),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtraError` naming ``dinolite[extra]``."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'dinolite[{extra}]'"
        ) from exc
