"""When too many samples are bad, stop: the skipped-sample window of one data worker.

Why a window per worker, counted against its full size, and why 10000 samples: docs/data.md, "When too
many samples are bad".
"""

from __future__ import annotations

import math
from collections import deque

from dinolite.data.sources import SourceError

# Defaults of data.decode_errors_max_fraction / data.decode_errors_window.
DEFAULT_MAX_SKIP_FRACTION = 0.01
DEFAULT_SKIP_WINDOW = 10_000


class TooManySkippedSamplesError(SourceError):
    """More samples of a data worker's recent window were skipped than the configured fraction allows."""


class SkippedSampleWindow:
    """The last ``size`` samples one data worker produced, and how many of them were skipped.

    :meth:`add` raises :class:`TooManySkippedSamplesError` as soon as more than ``max_fraction * size``
    of the last ``size`` samples were skipped. The rule counts against the full window size from the
    first sample on, so a source that is half corrupt stops after about ``2 * max_fraction * size``
    samples instead of waiting for the window to fill, while scattered bad files (a rate well under
    ``max_fraction``) never trip it. The window is per worker because that is where samples are decoded:
    no communication, and corruption concentrated in some shards is seen where a run-wide average would
    dilute it. It starts empty in each worker after a resume (skipped samples are not decoded).
    """

    def __init__(self, max_fraction: float, size: int, where: str) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        if size < 1:
            raise ValueError(f"the skipped-sample window must hold >= 1 sample, got {size}")
        self.max_fraction = max_fraction
        self.size = size
        # How many skipped samples the window tolerates; the epsilon keeps 0.29 * 100 at 29, not 28.
        self.allowed = math.floor(max_fraction * size + 1e-9)
        self.where = where
        self.flags: deque[bool] = deque(maxlen=size)
        self.skipped = 0
        self.examples: deque[str] = deque(maxlen=3)

    def add(self, skipped: bool, example: str = "") -> None:
        if len(self.flags) == self.size:
            self.skipped -= self.flags[0]
        self.flags.append(skipped)
        self.skipped += skipped
        if skipped:
            self.examples.append(example)
        if self.skipped > self.allowed:
            raise TooManySkippedSamplesError(
                f"{self.skipped} of the last {len(self.flags)} samples read by {self.where} could not be used, "
                f"more than data.decode_errors_max_fraction={self.max_fraction:g} of the window of "
                f"data.decode_errors_window={self.size} samples; latest: {'; '.join(self.examples)}. "
                "Fix or remove the bad shards (or raise data.decode_errors_max_fraction), then run again: "
                "the last checkpoint is intact"
            )
