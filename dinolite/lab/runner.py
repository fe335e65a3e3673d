"""Run a lab matrix: each run trains, is evaluated from its checkpoints, and leaves ``lab_result.json``.

Locally the runs go one after another in this process; on Slurm they are one job array, one array
task per run (:class:`dinolite.lab.slurm_array.LabArrayTask`), each trained through the same :class:`SlurmTrainingJob` as
``launch/slurm.py`` (USR2 -> checkpoint -> requeue -> resume). Either way:

- a run with a ``lab_result.json`` of the same config is finished and skipped;
- an interrupted run resumes from its latest checkpoint (the trainer does that from its folder);
- a run folder holding a run of a *different* config is an error naming the keys that differ (nothing
  already written is touched);
- whoever finishes the last run writes the report (on Slurm: the last array task to finish).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from dinolite.config import ConfigError, to_dict
from dinolite.jobs.console import configure_console
from dinolite.jobs.stop_signals import STOP_SIGNALS, StopFlag
from dinolite.jobs.training import train_in_job, training_process
from dinolite.lab.evaluate import EvalData, evaluate_run, random_init_baseline
from dinolite.lab.matrix import BASELINES_FOLDER
from dinolite.lab.matrix_plan import LabPlan, PlannedRun
from dinolite.lab.report import write_report
from dinolite.lab.traces import read_result, read_run_config, write_result
from dinolite.train.loop import TrainResult
from dinolite.train.step import NonFiniteLossError

FINAL_STATUSES = ("finished", "stopped", "diverged")  # a run in one of these is done (not retried)
# Keys that may differ between the planned config and a run folder's config without making it another run:
# where the run lives, and the watchdog's rules (the lab trains with action=warn, so they never change
# what is trained; the report replays the current rules over the run's log).
_VOLATILE_KEYS = ("train.output_dir", "monitor.thresholds", "monitor.method_thresholds", "monitor.action")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(run: PlannedRun) -> list[str]:
    """Keys whose value differs between the run folder's ``config.yaml`` and the planned config.

    The saved config is read back through the current schema, so keys added to the schema since the run
    was trained take their defaults and do not count as differences (a code update does not invalidate
    finished runs); neither do the output directory (a lab folder may be moved) nor the watchdog's rules.
    """
    existing = read_run_config(run.run_dir)
    if existing is None:
        return []
    old, new = _flatten(to_dict(existing)), _flatten(to_dict(run.config))
    differ = sorted(k for k in set(old) | set(new) if k not in _VOLATILE_KEYS and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ]


def check_run_dir(run: PlannedRun) -> None:
    """Refuse a run folder that holds another config's run (resuming it would mix two experiments)."""
    differ = config_differences(run)
    if differ:
        raise ConfigError(
            f"run {run.label!r}: {run.run_dir} holds a run with a different config ({', '.join(differ[:5])}"
            f"{', ...' if len(differ) > 5 else ''}); move that folder away or give the lab another output_dir"
        )


def is_done(run: PlannedRun) -> bool:
    """Trained and evaluated (``lab_result.json`` in a final status) with the planned config."""
    result = read_result(run.run_dir)
    return bool(result) and result.get("status") in FINAL_STATUSES and not config_differences(run)


def finish_run(
    plan: LabPlan, run: PlannedRun, status: str, iteration: int, message: str, train_seconds: float | None = None
) -> dict:
    """Evaluate a trained run from its checkpoints and write its ``lab_result.json``."""
    start = time.perf_counter()
    data = EvalData(plan.eval_train, plan.eval_val, plan.matrix.measurements, run.config.train.device)
    features = run.spec.features
    evaluation = evaluate_run(run.config, run.run_dir, data, features=features)
    random_init_baseline(run.config, data, plan.output_dir / BASELINES_FOLDER, features)
    result = {
        "label": run.label,
        "status": status,
        "iteration": iteration,
        "message": message,
        "train_seconds": train_seconds,
        "eval_seconds": round(time.perf_counter() - start, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **evaluation,
    }
    write_result(run.run_dir, result)
    return result


def train_one(
    run: PlannedRun,
    train_fn: Callable[..., TrainResult] = train_in_job,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or resume) one run in this process, holding its folder's run lock (as ``dinolite-train``
    does: another lab or training process on the same folder is refused). A diverged run is a result
    (``status="diverged"``), not an error."""
    try:
        with training_process(run.config, run.run_dir) as env:
            return train_fn(run.config, run.run_dir, env, stop_requested=stop_requested)
    except NonFiniteLossError as exc:
        return TrainResult("diverged", iteration_of(str(exc)), None, message=str(exc))


def iteration_of(message: str) -> int:
    """The iteration named in a :class:`NonFiniteLossError` message (``... at iteration N ...``)."""
    words = message.split()
    for i, word in enumerate(words[:-1]):
        if word == "iteration":
            digits = "".join(ch for ch in words[i + 1] if ch.isdigit())
            if digits:
                return int(digits)
    return -1


class StoppedDuringEvaluation(Exception):
    """A stop signal arrived while a trained run was being evaluated (the evaluation is redone next time)."""


@contextlib.contextmanager
def _stop_ends_evaluation(stop: StopFlag | None) -> Iterator[None]:
    """Inside: a stop signal ends the evaluation at once. It only reads checkpoints and writes its
    results atomically at the end, so nothing is lost; an error it raises because the signal also
    reached its data workers counts as the stop too."""
    if stop is None:
        yield
        return

    def handle(signum: int, frame: types.FrameType | None) -> None:
        stop.signal_name = stop.signal_name or signal.Signals(signum).name  # the lab's message says the rest
        raise StoppedDuringEvaluation(stop.signal_name)

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        if stop.is_set():
            raise StoppedDuringEvaluation(stop.signal_name)
        yield
    except Exception as exc:
        if stop.is_set() and not isinstance(exc, StoppedDuringEvaluation):
            raise StoppedDuringEvaluation(stop.signal_name) from exc
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_local(
    plan: LabPlan,
    labels: Optional[list[str]] = None,
    report: bool = True,
    train_fn: Callable[..., TrainResult] = train_in_job,
    stop: StopFlag | None = None,
) -> Path | None:
    """Every selected run, one after another in this process, then the report (unless ``report=False``).

    ``stop`` (installed by the caller for SIGTERM / SIGINT / SIGUSR2, as ``dinolite-lab`` does): a signal
    during training checkpoints the run at the next iteration; during an evaluation it ends it at once;
    between runs nothing new starts. Each way the lab says that the same command resumes, and returns None.
    """
    console = configure_console()
    selected = plan.select(labels)
    for run in selected:
        check_run_dir(run)
    for run in selected:
        if stop is not None and stop.is_set():
            return _stopped(console, f"stopped by {stop.signal_name} before {run.label} started")
        if is_done(run):
            console.info(f"[lab] {run.label}: finished earlier, skipped")
            continue
        console.info(f"[lab] {run.label}: {' '.join([run.spec.preset, *run.spec.overrides])} -> {run.run_dir}")
        start = time.perf_counter()
        result = train_one(run, train_fn, stop.is_set if stop is not None else None)
        if result.status == "preempted":
            by = f"by {stop.signal_name}" if stop is not None and stop.is_set() else "(preempted)"
            return _stopped(
                console,
                f"{run.label}: stopped {by} at iteration {result.iteration}, checkpoint {result.checkpoint_path}",
            )
        try:
            with _stop_ends_evaluation(stop):
                finish_run(
                    plan, run, result.status, result.iteration, result.message, round(time.perf_counter() - start, 1)
                )
        except StoppedDuringEvaluation as exc:
            return _stopped(console, f"{run.label}: stopped by {exc} during its evaluation (it is trained)")
        console.info(
            f"[lab] {run.label}: {result.status} at iteration {result.iteration} ({time.perf_counter() - start:.0f} s)"
        )
    return write_report(plan) if report else None


def _stopped(console: logging.Logger, what: str) -> None:
    console.info(f"[lab] {what}; run the same command again to resume (finished runs are skipped)")
    return None
