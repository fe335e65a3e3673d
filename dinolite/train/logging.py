"""Training metrics to the console, ``metrics.jsonl`` and TensorBoard, from one call per log step.

Only the main process writes (``enabled=False`` on the other ranks makes every method a no-op), so the
caller passes the rank decision in rather than this module asking torch.distributed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

LOGGER_NAME = "dinolite.train"


def get_console_logger(name: str = LOGGER_NAME, stream: TextIO = sys.stdout) -> logging.Logger:
    """A logger that prints ``time message`` lines once (no duplicate handlers on repeated calls)."""
    logger = logging.getLogger(name)
    if not any(getattr(h, "_dinolite", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        handler._dinolite = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; used for the ETA."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


class MetricLogger:
    """Writes one record per log step to the console, ``output_dir/metrics.jsonl`` and TensorBoard.

    Args:
        output_dir: the run directory (``metrics.jsonl`` and ``tensorboard/`` go there).
        enabled: False on non-main ranks: nothing is written.
        tensorboard: write TensorBoard event files (``torch.utils.tensorboard``).
        console: the logger for the one-line summary (defaults to :func:`get_console_logger`).
    """

    # Keys shown on the console line, in this order; everything else only goes to JSONL/TensorBoard.
    CONSOLE_KEYS = (
        "loss", "dino_loss", "ibot_loss", "koleo_loss", "lr", "wd", "momentum", "teacher_temp",
        "images_per_s", "data_wait", "memory_gb", "images_seen", "skipped_samples",
    )

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        console: Optional[logging.Logger] = None,
    ) -> None:
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.console = console or get_console_logger()
        self._jsonl: Optional[TextIO] = None
        self._tb: Any = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file (records carry their iteration).
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            # TensorBoard is imported only when asked for: its import is slow and pulls in protobuf.
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.info(message)

    def log(self, iteration: int, metrics: Mapping[str, Any], total_iterations: Optional[int] = None,
            eta_seconds: Optional[float] = None) -> None:
        """Record ``metrics`` (numbers) at ``iteration``; prints a summary line with the ETA."""
        if not self.enabled:
            return
        record = self._write(iteration, metrics, scalar_prefix="train/")
        progress = f"it {iteration}" + (f"/{total_iterations}" if total_iterations else "")
        shown = [f"{k} {_format_value(record[k])}" for k in self.CONSOLE_KEYS if k in record]
        eta = f"eta {format_duration(eta_seconds)}" if eta_seconds is not None else ""
        self.console.info("  ".join(x for x in [progress, *shown, eta] if x))

    def log_summary(self, iteration: int, metrics: Mapping[str, Any], title: str) -> None:
        """A separate block (e.g. collapse metrics): one console line, also to JSONL/TensorBoard."""
        if not self.enabled:
            return
        record = self._write(iteration, metrics, scalar_prefix="")
        shown = "  ".join(f"{k.split('/')[-1]} {_format_value(v)}" for k, v in record.items() if k != "iteration")
        self.console.info(f"it {iteration} {title}: {shown}")

    def _write(self, iteration: int, metrics: Mapping[str, Any], scalar_prefix: str) -> dict[str, Any]:
        """One JSONL record, and its finite numbers as TensorBoard scalars (keys without a ``/`` get
        ``scalar_prefix``)."""
        record = {"iteration": iteration, **{k: _plain(v) for k, v in metrics.items()}}
        assert self._jsonl is not None
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key if "/" in key else f"{scalar_prefix}{key}", value, iteration)
            self._tb.flush()
        return record

    def log_histograms(self, iteration: int, histograms: Mapping[str, Any]) -> None:
        """TensorBoard histograms (e.g. the collapse monitor's log10 singular value spectra)."""
        if not self.enabled or self._tb is None:
            return
        for tag, values in histograms.items():
            self._tb.add_histogram(tag, values, iteration)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers, so the record is JSON-serialisable."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return value
