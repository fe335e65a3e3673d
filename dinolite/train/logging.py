"""Training metrics to the console, ``metrics.jsonl``, TensorBoard and experiment trackers.

Only the main process writes (``enabled=False`` on the other ranks makes every method a no-op), so the
caller passes the rank decision in rather than this module asking torch.distributed.

``metrics.jsonl``: ONE record per iteration that logged anything (docs/logging.md, pinned by
tests/train/test_logging.py)::

    {"iteration": 30, "time": 1764600000.1, "loss": 9.1, "dino_loss": 3.2, ..., "images_seen": 1920,
     "collapse/backbone_rankme": 41.3, ..., "eval/knn_top1": 61.2}

- ``iteration`` (int) and ``time`` (float, Unix seconds when the record was written) are always there;
- training metrics (the log-step window's means, schedule values, throughput) have no prefix;
- every other group has one: ``grad_norm/``, ``collapse/`` (the monitor), ``eval/`` (online evaluation);
- counts (``images_seen``, ``skipped_samples``, ``damaged_shards``, ``skipped_steps``,
  ``collapse/num_samples``) are integers, the rest floats.

TensorBoard receives the same numbers (unprefixed training keys under ``train/``); metric sinks (the
experiment trackers of ``train.loggers``, built by :mod:`dinolite.jobs.trackers` and passed in) receive
each record as it is written.

The console gets one compact line per log step (losses, lr, img/s, ETA) and, for the other groups, one
short line with their key figures only; everything else is in the JSONL/TensorBoard. The console is the
standard logger ``dinolite.train`` (INFO records); where its lines go is set up by whoever runs the
training (``dinolite-train`` and the lab: :func:`dinolite.jobs.console.configure_console`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from dinolite.config import Config
from dinolite.io import write_text_atomic
from dinolite.progress import progress_bar

LOGGER_NAME = "dinolite.train"
# Metrics that count things: written and shown as integers.
COUNT_KEYS = frozenset({"images_seen", "skipped_samples", "damaged_shards", "skipped_steps", "collapse/num_samples"})
# Collapse key figures for the console: (metric, label, format); the rest goes to JSONL/TensorBoard only.
COLLAPSE_CONSOLE = (
    ("collapse/backbone_std_ratio", "std*sqrt(D)", "{:.2f}"),
    ("collapse/teacher_entropy_norm", "teacher H/lnK", "{:.2f}"),
    ("collapse/teacher_mean_entropy_norm", "batch H/lnK", "{:.2f}"),
    ("collapse/student_teacher_kl", "KL", "{:.3f}"),
)
DATA_WAIT_SHOWN_ABOVE = 0.2  # show the data-loading share on the console only when it slows training


class MetricSink(Protocol):
    """Receives every written record (an experiment tracker: :mod:`dinolite.jobs.trackers`)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def console_logger() -> logging.Logger:
    """The training console: the standard logger ``dinolite.train``. Its lines are INFO records, on
    unless the caller set another level; handlers are the caller's (``dinolite-train`` installs one with
    :func:`dinolite.jobs.console.configure_console`; a library adds none)."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; used for the ETA."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_number(value: Any) -> str:
    """Integers as they are; floats with 3 decimals below 1, 2 below 100, none above (scientific below
    1e-3 and from 1e5), so a column of losses keeps its width from line to line."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def log_due(iteration: int, every: int, last: int) -> bool:
    """Whether ``iteration`` (1-based, after the step) gets a console line: every ``every`` iterations,
    the first one (a broken run shows at once) and the last one."""
    return iteration == 1 or iteration % every == 0 or iteration == last


def plain(key: str, value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers; counts to int (JSON-serialisable, one type per key)."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if key in COUNT_KEYS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def train_line(iteration: int, record: Mapping[str, Any], total: int | None, eta_seconds: float | None) -> str:
    """``it 30/300  loss 9.12 (dino 3.2 ibot 3.1 koleo -0.02)  lr 1.0e-03  310 img/s  eta 0:01:05``."""
    parts = [f"it {iteration}" + (f"/{total}" if total else "")]
    if "loss" in record:
        terms = [
            f"{k.removesuffix('_loss')} {format_number(v)}"
            for k, v in record.items()
            if k.endswith("_loss") and "/" not in k
        ]
        parts.append(f"loss {format_number(record['loss'])}" + (f" ({' '.join(terms)})" if terms else ""))
    if "lr" in record:
        parts.append(f"lr {record['lr']:.1e}")
    if "images_per_s" in record:
        parts.append(f"{record['images_per_s']:.0f} img/s")
    if record.get("data_wait", 0.0) > DATA_WAIT_SHOWN_ABOVE:
        parts.append(f"data wait {record['data_wait']:.0%}")
    if record.get("skipped_samples"):
        parts.append(f"skipped {record['skipped_samples']}")
    if record.get("damaged_shards"):
        parts.append(f"damaged shards {record['damaged_shards']}")
    if record.get("skipped_steps"):
        parts.append(f"overflow steps {record['skipped_steps']}")
    if eta_seconds is not None:
        parts.append(f"eta {format_duration(eta_seconds)}")
    return "  ".join(parts)


def group_line(iteration: int, title: str, metrics: Mapping[str, Any]) -> str:
    """The console line of a metric group: its key figures only."""
    if title == "collapse":
        shown = []
        if "collapse/backbone_rankme" in metrics:
            ratio = metrics.get("collapse/backbone_rankme_ratio")
            shown.append(
                f"rankme {metrics['collapse/backbone_rankme']:.1f}"
                + (f" ({ratio:.0%} of max)" if ratio is not None else "")
            )
        shown += [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in COLLAPSE_CONSOLE if key in metrics]
    elif title == "eval":
        shown = [
            f"{key.removeprefix('eval/').replace('_top1', '')} top-1 {value:.1f}%"
            for key, value in metrics.items()
            if key.endswith("_top1")
        ]
    else:
        shown = [f"{key.split('/')[-1]} {format_number(value)}" for key, value in metrics.items()]
    return f"it {iteration} {title}: " + "  ".join(shown)


class MetricLogger:
    """Writes the records described in the module docstring.

    Args:
        output_dir: the run directory (``metrics.jsonl`` and ``tensorboard/`` go there).
        enabled: False on non-main ranks: nothing is written.
        tensorboard: write TensorBoard event files (``torch.utils.tensorboard``).
        console: the logger for the console lines (defaults to :func:`console_logger`).
        trackers: metric sinks (experiment trackers) that receive every record; closed with the logger.
        resume_iteration: the iteration a resumed run restarts from: records after it (written by the
            interrupted run, about to be replayed) are dropped from ``metrics.jsonl`` and hidden in
            TensorBoard (``purge_step``), so every iteration is logged once there (trackers keep theirs).
    """

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        console: logging.Logger | None = None,
        trackers: Sequence[MetricSink] = (),
        progress: bool = False,
        resume_iteration: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.console = console or console_logger()
        self.trackers = list(trackers)
        self.progress = progress  # a progress bar over the iterations (on a terminal only); see start()
        self._jsonl: TextIO | None = None
        self._tb: Any = None
        self._pending: dict[str, Any] = {}
        self._bar: Any = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_iteration is not None:
            drop_records_after(self.output_dir / "metrics.jsonl", resume_iteration)
        # Append: a resumed run continues the same file (records carry their iteration).
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            # TensorBoard is imported only when asked for: its import is slow and pulls in protobuf.
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_iteration + 1 if resume_iteration is not None else None
            self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=purge)

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        output_dir: str | Path,
        enabled: bool,
        resume_iteration: int | None = None,
        trackers: Sequence[MetricSink] = (),
    ) -> MetricLogger:
        """TensorBoard, ``trackers`` (the sinks of ``train.loggers``, built by the caller) and
        (``train.progress``) a progress bar."""
        return cls(
            output_dir,
            enabled=enabled,
            trackers=trackers if enabled else (),
            progress=cfg.train.progress,
            resume_iteration=resume_iteration,
        )

    def start(self, iteration: int, total: int) -> None:
        """Begin the iteration progress bar at ``iteration`` of ``total`` (when enabled and interactive)."""
        if self.enabled and self.progress:
            self._bar = progress_bar(total=total, desc="train", unit="it", enabled=True)
            self._bar.update(iteration)

    def step(self, iteration: int) -> None:
        """Advance the progress bar to ``iteration``."""
        if self._bar is not None:
            self._bar.update(iteration - self._bar.n)

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.info(message)

    def log(
        self,
        iteration: int,
        metrics: Mapping[str, Any],
        total_iterations: int | None = None,
        eta_seconds: float | None = None,
    ) -> None:
        """Training metrics of a log step: the compact console line; the iteration's record is written."""
        if not self.enabled:
            return
        record = self._add(iteration, metrics)
        self.console.info(train_line(iteration, record, total_iterations, eta_seconds))
        self.flush()

    def log_summary(self, iteration: int, metrics: Mapping[str, Any], title: str) -> None:
        """A group of prefixed metrics (``collapse/``, ``eval/``): one short console line of key figures;
        joins the iteration's record (written with the training metrics, or at the next iteration)."""
        if not self.enabled:
            return
        self._add(iteration, metrics)
        self.console.info(group_line(iteration, title, {k: plain(k, v) for k, v in metrics.items()}))

    def _add(self, iteration: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        if self._pending and self._pending["iteration"] != iteration:
            self.flush()
        if not self._pending:
            self._pending = {"iteration": int(iteration)}
        values = {k: plain(k, v) for k, v in metrics.items()}
        self._pending.update(values)
        return values

    def flush(self) -> None:
        """Write the pending record (JSONL line, TensorBoard scalars, trackers)."""
        if not self.enabled or not self._pending:
            return
        iteration = self._pending["iteration"]
        record = {
            "iteration": iteration,
            "time": round(time.time(), 3),
            **{k: v for k, v in self._pending.items() if k != "iteration"},
        }
        self._pending = {}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = {
            (key if "/" in key else f"train/{key}"): float(value)
            for key, value in record.items()
            if key not in ("iteration", "time") and isinstance(value, (int, float)) and math.isfinite(value)
        }
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, iteration)
            self._tb.flush()
        for tracker in self.trackers:
            tracker.log(scalars, iteration)

    def log_histograms(self, iteration: int, histograms: Mapping[str, Any]) -> None:
        """TensorBoard histograms (e.g. the collapse monitor's log10 singular value spectra)."""
        if not self.enabled or self._tb is None:
            return
        for tag, values in histograms.items():
            self._tb.add_histogram(tag, values, iteration)
        self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def drop_records_after(path: Path, iteration: int) -> int:
    """Rewrite the JSONL file ``path`` (atomically) without records whose ``iteration`` is above
    ``iteration``; returns how many were dropped. Unparsable lines (a write cut by a kill) go too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int) and record["iteration"] > iteration:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped
