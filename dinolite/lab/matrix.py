"""The collapse lab's matrix file: which runs, on what data, for how long, measured how, expecting what.

A matrix file (``dinolite/configs/lab/*.yaml``, or any path) is read into :class:`LabMatrix` by
:func:`load_matrix` with the config module's checks (unknown keys name the nearest valid one, wrong types
name the expected type, every message starts with the file). :func:`dinolite.lab.matrix_plan.plan_matrix`
then resolves every run to a full training config; the keys the lab sets itself (:data:`LAB_KEYS`) may not
be set by a run's own overrides (the error says which matrix key does).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import MISSING

from dinolite.config import CONFIG_DIR, ConfigError, load_yaml_as
from dinolite.config.opt_ins import check_pipe_sources
from dinolite.data.builtin_sets import builtin_set, builtin_sets_text
from dinolite.eval.online import FEATURES
from dinolite.monitor import collapse_rules
from dinolite.monitor.collapse_rules import COMPLETE, DIMENSIONAL, HEALTHY

# Comparisons with the run's reference (Wang et al. 2022's asymmetry experiments): its final accuracy is
# higher, lower, or within the margin of the reference's (dinolite/lab/verdict.py: compare).
BETTER, WORSE, ON_PAR = "better than reference", "worse than reference", "on par with reference"
COMPARISONS = (BETTER, WORSE, ON_PAR)
# What a run can be expected to show: a collapse verdict (the verdict logic decides between the first
# three) or a comparison with its reference.
EXPECTED_FINDINGS = (HEALTHY, COMPLETE, DIMENSIONAL, *COMPARISONS)
COMPARISON_METRICS = ("knn", "linear")
DIGITS = "digits"
MATRIX_DIR = CONFIG_DIR / "lab"  # the shipped matrices (packaged with the presets)
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# The lab's own folders in <output_dir>, shared by every run: a run labelled like one would write into it.
DATA_FOLDER, REPORT_FOLDER, BASELINES_FOLDER = "data", "report", "baselines"
SLURM_LOGS_FOLDER = "slurm_logs"  # dinolite.jobs.slurm_submit.LOG_DIR_NAME (that module needs submitit)
SHARED_FOLDERS = (DATA_FOLDER, REPORT_FOLDER, BASELINES_FOLDER, SLURM_LOGS_FOLDER)


@dataclass
class LabRun:
    label: str = MISSING  # names the run's folder and its row in the report: letters, digits, _.+-
    preset: str = MISSING  # a training preset (demo, demo_simsiam, vitb16, ...) or a .yaml path
    overrides: list[str] = field(default_factory=list)  # key=value, applied after the matrix's overrides
    expect: str = MISSING  # healthy | complete collapse | dimensional collapse
    why: str = ""  # the paper's finding this run reproduces (shown in the report)
    # label of the run this one is compared with: for dimensional collapse (Jing et al.), and the baseline of
    # a "better / worse than / on par with reference" expectation (required there)
    reference: str = ""
    # cls | avgpool (dinolite.eval.online.FEATURES): what the run's kNN and covariance spectra read; avgpool,
    # the mean patch token, for methods that train no CLS objective (I-JEPA, SimMIM)
    features: str = "cls"
    # thresholds of the matrix's 'verdict' this run replaces (a method whose healthy output is far from
    # isotropic, say why in a comment); the comparison settings stay the matrix's
    verdict: dict[str, float] = field(default_factory=dict)


@dataclass
class Measurements:
    every: int = 10  # collapse metrics and the loss every N iterations
    max_samples: int = 256  # embeddings per collapse measurement (the monitor gathers a batch's worth)
    spectra: int = 4  # covariance spectra of the evaluated backbone at this many checkpoints (+ init)
    spectrum_samples: int = 1024  # evaluation images the spectra, RankMe and std are computed on
    knn: bool = True  # kNN top-1 of the evaluated backbone's CLS at the end (and at random init)
    knn_k: int = 20
    linear: bool = True  # linear probe (DINOv2's grid) at the end (and at random init)
    linear_epochs: int = 10
    # the Spearman rank correlation of the final eval-set RankMe with the kNN top-1 over the finished runs,
    # in the report (Garrido et al. 2023, Fig. 4: RankMe choosing hyper-parameters without labels)
    rank_correlation: bool = False
    # the patch-token norm histogram, high-norm share and per-head CLS attention maps of each run's final
    # checkpoint, in the report (Darcet et al. 2024: dinolite/lab/register_artifacts.py)
    register_artifacts: bool = False
    # the top N eigenvalues of the raw projector-output covariance at every measurement (monitor.eigenvalues),
    # their figure and the stepwise-learning measurement in the report (Simon et al. 2023, Fig. 1); 0: off
    eigenvalues: int = 0


@dataclass
class VerdictRules:
    """Thresholds of the verdict (dinolite/lab/verdict.py applies them); the defaults are the collapse
    rules' (dinolite.monitor.collapse_rules), the ones the watchdog and the visualiser read too."""

    # std x sqrt(d) of the L2-normalised embedding below: constant output
    complete_std_ratio: float = collapse_rules.CONSTANT_OUTPUT_STD_RATIO
    complete_rankme: float = collapse_rules.ONE_DIRECTION_RANKME  # RankMe below: every output on one line
    # batch-mean teacher entropy / ln K below: one prototype for all
    one_prototype_entropy: float = collapse_rules.ONE_PROTOTYPE_ENTROPY_NORM
    # per-image teacher entropy / ln K above: a flat output for every image
    uniform_entropy: float = collapse_rules.UNIFORM_ENTROPY_NORM
    # RankMe / min(N, D) below (and not complete): dimensional
    dimensional_rank_ratio: float = collapse_rules.LOW_RANK_RANKME_RATIO
    # eval-set RankMe below this x the reference run's
    dimensional_reference_fraction: float = collapse_rules.FEWER_DIMENSIONS_FRACTION
    # the last fraction of the run a condition must hold over (>= 1 point)
    settle_fraction: float = collapse_rules.SETTLE_FRACTION
    comparison_metric: str = "knn"  # knn | linear: the final top-1 a comparison with the reference reads
    comparison_margin: float = 2.0  # points of top-1: |difference| below it is "on par with reference"


# VerdictRules fields a run may replace: the thresholds (the comparison metric and margin are the matrix's,
# so every comparison in one report reads the same figure).
RUN_VERDICT_KEYS = (
    "complete_std_ratio",
    "complete_rankme",
    "one_prototype_entropy",
    "uniform_entropy",
    "dimensional_rank_ratio",
    "dimensional_reference_fraction",
    "settle_fraction",
)


def run_rules(matrix_rules: VerdictRules, run: LabRun) -> VerdictRules:
    """The verdict thresholds of one run: the matrix's, with the run's ``verdict`` entries replaced."""
    return replace(matrix_rules, **{key: float(value) for key, value in run.verdict.items()})


@dataclass
class LabMatrix:
    name: str = MISSING
    description: str = ""
    output_dir: str = MISSING  # runs in <output_dir>/<label>/, the report in <output_dir>/report/
    iterations: int = MISSING  # training budget of every run
    data: list[str] = field(default_factory=lambda: [DIGITS])  # data.source of every run
    eval_train: list[str] = field(default_factory=list)  # labelled folders/shards for kNN and linear;
    eval_val: list[str] = field(default_factory=list)  # default for a built-in data set: its own splits
    overrides: list[str] = field(default_factory=list)  # key=value for every run (before the run's own)
    measurements: Measurements = field(default_factory=Measurements)
    verdict: VerdictRules = field(default_factory=VerdictRules)
    runs: list[LabRun] = field(default_factory=list)


# Training keys the lab sets itself, and the matrix key that decides each.
LAB_KEYS: dict[str, str] = {
    "train.max_iterations": "iterations",
    "train.iterations_per_epoch": "iterations",
    "train.output_dir": "output_dir",
    "train.log_every": "measurements.every",
    "train.checkpoint_every": "measurements.spectra",
    "train.keep_last_checkpoints": "measurements.spectra",
    "monitor.every": "measurements.every",
    "monitor.max_samples": "measurements.max_samples",
    "monitor.spectrum_every": "measurements.spectra",
    "monitor.eigenvalues": "measurements.eigenvalues",
    "monitor.action": "(the lab always warns: collapsed runs keep training)",
    "data.source": "data",
    "evaluation.knn_at_end": "measurements.knn",
}


def choice_hint(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """``; did you mean 'x'?`` for a near choice, else the list of choices: the tail of an error message."""
    near = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; expected one of: {', '.join(choices)}"


def available_matrices() -> list[str]:
    """Names of the matrices shipped in ``dinolite/configs/lab/``."""
    return sorted(p.stem for p in MATRIX_DIR.glob("*.yaml"))


def resolve_matrix(name_or_path: str | Path) -> Path:
    """A ``.yaml`` path as given, or a shipped matrix by name (``seeds`` -> dinolite/configs/lab/seeds.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    candidate = MATRIX_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown matrix {str(name_or_path)!r}{choice_hint(str(name_or_path), available_matrices())} "
            "(or pass the path to a .yaml file)"
        )
    return candidate


def load_matrix(path: str | Path) -> LabMatrix:
    """Read and check a matrix file (keys, types, values); raises ``ConfigError`` naming file/key/value."""
    path = resolve_matrix(path)
    matrix: LabMatrix = load_yaml_as(path, LabMatrix, what="matrix file")
    src = str(path)
    _check_budget_and_measurements(matrix, src)
    _check_verdict_rules(matrix.verdict, src)
    _check_data(matrix, src)
    seen: dict[str, int] = {}
    for i, run in enumerate(matrix.runs):
        _check_run(matrix, run, f"{src}: runs[{i}]", seen)
        seen[run.label] = i
    for item in matrix.overrides:
        key = item.split("=", 1)[0].strip()
        if key in LAB_KEYS:
            raise ConfigError(f"{src}: overrides: {key!r} is set by the lab from {LAB_KEYS[key]}; use that key")
    return matrix


def _check_budget_and_measurements(matrix: LabMatrix, src: str) -> None:
    if matrix.iterations < 1:
        raise ConfigError(f"{src}: invalid value for 'iterations': {matrix.iterations}; must be >= 1")
    m = matrix.measurements
    for key in ("every", "max_samples", "spectrum_samples", "knn_k", "linear_epochs"):
        if getattr(m, key) < 1:
            raise ConfigError(f"{src}: invalid value for 'measurements.{key}': {getattr(m, key)}; must be >= 1")
    if m.eigenvalues < 0:
        raise ConfigError(f"{src}: invalid value for 'measurements.eigenvalues': {m.eigenvalues}; must be >= 0")
    if m.max_samples < 2:
        raise ConfigError(f"{src}: invalid value for 'measurements.max_samples': {m.max_samples}; must be >= 2")
    if not 0 <= m.spectra <= matrix.iterations:
        raise ConfigError(f"{src}: invalid value for 'measurements.spectra': {m.spectra}; must be in [0, iterations]")
    if m.every > matrix.iterations:
        raise ConfigError(
            f"{src}: 'measurements.every' = {m.every} exceeds 'iterations' = {matrix.iterations}: "
            "no measurement would be taken"
        )


def _check_verdict_rules(rules: VerdictRules, src: str) -> None:
    if not 0 < rules.settle_fraction <= 1:
        raise ConfigError(
            f"{src}: invalid value for 'verdict.settle_fraction': {rules.settle_fraction}; must be in (0, 1]"
        )
    if rules.comparison_metric not in COMPARISON_METRICS:
        raise ConfigError(
            f"{src}: invalid value for 'verdict.comparison_metric': {rules.comparison_metric!r}"
            f"{choice_hint(rules.comparison_metric, COMPARISON_METRICS)}"
        )
    if rules.comparison_margin < 0:
        raise ConfigError(
            f"{src}: invalid value for 'verdict.comparison_margin': {rules.comparison_margin}; must be >= 0"
        )


def _check_data(matrix: LabMatrix, src: str) -> None:
    """The runs and their data: sources, evaluation splits (a built-in set brings its own)."""
    for key in ("data", "eval_train", "eval_val"):  # shell commands only with the user's grant, never the file's
        check_pipe_sources(getattr(matrix, key), key, src)
    if not matrix.runs:
        raise ConfigError(f"{src}: 'runs' is empty; list at least one run (label, preset, expect)")
    if bool(matrix.eval_train) != bool(matrix.eval_val):
        raise ConfigError(f"{src}: set both 'eval_train' and 'eval_val', or neither")
    m = matrix.measurements
    if not matrix.eval_train and builtin_set(matrix.data) is None and (m.knn or m.linear or m.spectra):
        raise ConfigError(
            f"{src}: 'data' is {matrix.data}, not {builtin_sets_text()}: give the labelled 'eval_train' and "
            "'eval_val' sources the kNN, linear probe and spectra are computed on"
        )


def _check_run(matrix: LabMatrix, run: LabRun, where: str, seen: dict[str, int]) -> None:
    """One run of the matrix (``where``: ``<file>: runs[i]``; ``seen``: the labels of the runs before it)."""
    _check_label(run.label, where, seen)
    rules = matrix.verdict
    if run.expect not in EXPECTED_FINDINGS:
        raise ConfigError(
            f"{where}.expect ({run.label}): {run.expect!r} is not a finding{choice_hint(run.expect, EXPECTED_FINDINGS)}"
        )
    if run.features not in FEATURES:
        raise ConfigError(
            f"{where}.features ({run.label}): {run.features!r} is not a feature set{choice_hint(run.features, FEATURES)}"
        )
    if run.expect in COMPARISONS and not run.reference:
        raise ConfigError(
            f"{where}.expect ({run.label}): {run.expect!r} compares with another run; name it in 'reference'"
        )
    if run.expect in COMPARISONS and getattr(matrix.measurements, rules.comparison_metric) is False:
        raise ConfigError(
            f"{where}.expect ({run.label}): {run.expect!r} reads the {rules.comparison_metric} top-1, but "
            f"'measurements.{rules.comparison_metric}' is false"
        )
    if run.reference and run.reference not in {r.label for r in matrix.runs} - {run.label}:
        others = [r.label for r in matrix.runs if r.label != run.label]
        raise ConfigError(
            f"{where}.reference ({run.label}): {run.reference!r} is not another run's label"
            f"{choice_hint(run.reference, others)}"
        )
    for key, value in run.verdict.items():
        if key not in RUN_VERDICT_KEYS:
            raise ConfigError(
                f"{where}.verdict ({run.label}): {key!r} is not a threshold a run may set{choice_hint(key, RUN_VERDICT_KEYS)}"
            )
        if key == "settle_fraction" and not 0 < value <= 1:
            raise ConfigError(f"{where}.verdict.settle_fraction ({run.label}): {value}; must be in (0, 1]")
    for item in run.overrides:
        key = item.split("=", 1)[0].strip()
        if key in LAB_KEYS:
            raise ConfigError(
                f"{where}.overrides ({run.label}): {key!r} is set by the lab from the matrix's "
                f"{LAB_KEYS[key]}; remove it from the run"
            )


def _check_label(label: str, where: str, seen: dict[str, int]) -> None:
    if not _LABEL.fullmatch(label):
        raise ConfigError(f"{where}.label {label!r}: use letters, digits and _.+- (it names a folder)")
    if label.lower() in SHARED_FOLDERS:  # lower: "Data" is "data" on a case-insensitive filesystem
        raise ConfigError(
            f"{where}.label {label!r}: <output_dir>/{label} would be the lab's own folder, shared by "
            f"every run ({', '.join(SHARED_FOLDERS)} are reserved); choose another label"
        )
    if label in seen:
        raise ConfigError(f"{where}.label {label!r} is already the label of runs[{seen[label]}]")
