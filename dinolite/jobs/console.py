"""The training console on a terminal: ``time message`` lines on stdout that a progress bar does not tear.

The trainer logs its lines as INFO records of the standard logger ``dinolite.train``
(:func:`dinolite.train.logging.console_logger`) and installs no handler; the programs that run training
(``dinolite-train``, the Slurm job, the lab) call :func:`configure_console` once.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from tqdm import tqdm

from dinolite.train.logging import LOGGER_NAME


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so a progress bar on the terminal is redrawn below the message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; the logging module's own policy
            self.handleError(record)


def configure_console(name: str = LOGGER_NAME, stream: TextIO = sys.stdout) -> logging.Logger:
    """The logger ``name`` prints ``time message`` lines to ``stream`` at INFO and above, once (no
    duplicate handlers on repeated calls), and no longer passes them on to the root logger."""
    logger = logging.getLogger(name)
    if not any(getattr(h, "_dinolite", False) for h in logger.handlers):
        handler = _TqdmAwareHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        handler._dinolite = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
