"""The collapse lab's plan: every run of a matrix file resolved to a full training :class:`Config`.

:func:`plan_matrix` reads the matrix (:func:`dinolite.lab.matrix.load_matrix`), then resolves each run:

    preset  <-  matrix ``overrides``  <-  the run's ``overrides``  <-  what the lab sets

The lab sets the budget and the measurement cadence, so that every run of a matrix is measured the
same way whatever its method: ``train.max_iterations = iterations`` and ``train.iterations_per_epoch =
ceil(iterations / optim.epochs)`` (the preset's schedules, warm-ups included, are compressed into the
budget rather than cut off), ``monitor.every`` / ``train.log_every`` = ``measurements.every``, one
checkpoint per spectrum (all kept: the spectra are computed from them after training), the watchdog on
``warn`` (a collapsed run keeps training, so its whole trace and its final kNN are in the report), and
the shared data. A run's own overrides may not set those keys (``LAB_KEYS``; the error says which matrix
key does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections before a config is read)
from dinolite.config import Config, ConfigError, load_config
from dinolite.data.builtin_sets import BUILTIN_SETS, builtin_set, misspelt_builtin_set, prepare_builtin_set
from dinolite.lab.matrix import (
    DATA_FOLDER,
    REPORT_FOLDER,
    LabMatrix,
    LabRun,
    choice_hint,
    load_matrix,
    resolve_matrix,
)


@dataclass
class PlannedRun:
    """One run of the matrix, resolved: its training config and where it lives."""

    index: int
    spec: LabRun
    config: Config
    run_dir: Path

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass
class LabPlan:
    matrix: LabMatrix
    source: Path  # the matrix file
    output_dir: Path
    runs: list[PlannedRun]
    eval_train: list[str]
    eval_val: list[str]
    replaced_data: list[str] = field(default_factory=list)  # the matrix's own data, when --data replaced it

    @property
    def report_dir(self) -> Path:
        return self.output_dir / REPORT_FOLDER

    def select(self, labels: Optional[list[str]]) -> list[PlannedRun]:
        """The runs named in ``labels`` (all when None); unknown labels are an error with a hint."""
        if not labels:
            return list(self.runs)
        known = [r.label for r in self.runs]
        for label in labels:
            if label not in known:
                raise ConfigError(f"{self.source}: no run labelled {label!r}{choice_hint(label, known)}")
        return [r for r in self.runs if r.label in labels]


def lab_overrides(matrix: LabMatrix, epochs: int, run_dir: Path, data: list[str]) -> list[str]:
    """The ``key=value`` overrides the lab applies to every run (see the module docstring)."""
    m = matrix.measurements
    spectra = max(m.spectra, 1)
    checkpoint_every = math.ceil(matrix.iterations / spectra)
    return [
        f"train.max_iterations={matrix.iterations}",
        f"train.iterations_per_epoch={math.ceil(matrix.iterations / epochs)}",
        f"train.output_dir={run_dir}",
        f"train.log_every={m.every}",
        f"train.checkpoint_every={checkpoint_every}",
        f"train.keep_last_checkpoints={spectra + 1}",
        f"monitor.every={m.every}",
        f"monitor.max_samples={m.max_samples}",
        f"monitor.spectrum_every={checkpoint_every}",
        "monitor.action=warn",
        "data.source=[" + ",".join(data) + "]",
        "evaluation.knn_at_end=false",
        "evaluation.online_every=0",  # the lab measures kNN itself, on the kept checkpoints
    ] + ([f"monitor.eigenvalues={m.eigenvalues}"] if m.eigenvalues else [])


def with_data(matrix: LabMatrix, data: str) -> LabMatrix:
    """The matrix on the built-in set ``data`` (``--data``) instead of its own ``data``: every run trains on
    it and is evaluated on its own splits (the matrix's ``eval_train`` / ``eval_val`` belong to its data)."""
    if data not in BUILTIN_SETS:
        near = misspelt_builtin_set([data])
        hint = f"; did you mean {near!r}?" if near else ""
        raise ConfigError(
            f"--data {data!r} is not a built-in data set{hint} (the built-in sets: {', '.join(BUILTIN_SETS)}; "
            "for your own shards write a matrix file with 'data', 'eval_train' and 'eval_val')"
        )
    return replace(matrix, data=[data], eval_train=[], eval_val=[])


def default_output_dir(matrix: LabMatrix, data: Optional[str]) -> str:
    """The matrix's ``output_dir``, or ``<output_dir>-<data>`` when ``--data`` names another set: runs of one
    matrix on two sets never share a folder (the lab would resume one set's run on the other)."""
    if data is None or [data] == list(matrix.data):
        return matrix.output_dir
    return f"{matrix.output_dir.rstrip('/')}-{data}"


def plan_matrix(
    path: str | Path, output_dir: Optional[str | Path] = None, prepare: bool = True, data: Optional[str] = None
) -> LabPlan:
    """Load the matrix at ``path`` and resolve every run's training config (errors name file, run, key).

    ``output_dir`` replaces the matrix's ``output_dir``. ``data`` (a built-in set's name, ``--data``)
    replaces the matrix's ``data`` for every run (:func:`with_data`; default folder:
    :func:`default_output_dir`). With ``prepare``, a built-in ``data`` (``[digits]``,
    ``[fashion_mnist]``) is written once under ``<output_dir>/data`` (idempotent) and shared by every run:
    its train shards for training, its train/val folders for evaluation. ``prepare=False`` (dry runs)
    writes nothing and leaves the set's name to each run.
    """
    path = resolve_matrix(path)
    matrix = load_matrix(path)
    replaced = [] if data is None or [data] == list(matrix.data) else list(matrix.data)
    out = Path(output_dir or default_output_dir(matrix, data)).expanduser().absolute()
    if data is not None:
        matrix = with_data(matrix, data)
    data, eval_train, eval_val = list(matrix.data), list(matrix.eval_train), list(matrix.eval_val)
    name = builtin_set(matrix.data)
    if name is not None and prepare:
        prepared = prepare_builtin_set(name, out / DATA_FOLDER)
        data = list(prepared["train"])
        if not eval_train:
            eval_train, eval_val = [prepared["train_folder"]], [prepared["val_folder"]]
    runs = []
    for i, spec in enumerate(matrix.runs):
        run_dir = out / spec.label
        where = f"{path}: runs[{i}] ({spec.label}), preset {spec.preset!r}"
        try:
            own = load_config(spec.preset, [*matrix.overrides, *spec.overrides])
            cfg = load_config(
                spec.preset,
                [*matrix.overrides, *spec.overrides, *lab_overrides(matrix, own.optim.epochs, run_dir, data)],
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        runs.append(PlannedRun(i, spec, cfg, run_dir))
    return LabPlan(matrix, path, out, runs, eval_train, eval_val, replaced)
