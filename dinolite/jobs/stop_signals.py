"""Stop signals -> a flag the loop polls -> a checkpoint on every rank at the next iteration.

One mechanism for every launcher: ``launch/local.py`` (one process or each torchrun worker) installs
:class:`StopFlag` for SIGTERM, SIGINT (Ctrl-C) and SIGUSR2; the Slurm job installs it for the preemption
signal. The loop calls ``flag.is_set`` once per iteration, agrees across ranks (all-reduce) to stop,
writes a checkpoint through the normal atomic path and returns ``status == "preempted"``; the launcher
then exits 0 and says "run again to continue".

A handler must not do real work (it interrupts arbitrary code, collectives included), so it only records
the signal. Repeated signals change nothing: torchrun forwards the Ctrl-C it received itself to workers
that already got it from the terminal, so a second SIGINT must not abort the checkpoint. To stop at once,
use SIGKILL (the previous checkpoint is kept; a save in progress stays a temp folder that the next save removes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import types
from collections.abc import Iterator, Sequence

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class StopFlag:
    """Records that a stop signal arrived; ``flag.is_set`` is the loop's ``stop_requested``."""

    def __init__(self, prefix: str = "[dinolite]") -> None:
        self.signal_name: str | None = None
        self.prefix = prefix
        self._pid = os.getpid()

    def is_set(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum: int, frame: types.FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None and os.getpid() == self._pid:  # not in a forked child
            self.signal_name = name
            print(f"{self.prefix} caught {name}: checkpointing at the next iteration", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[StopFlag]:
        """Handle ``signals`` with this flag inside the block; the previous handlers come back after it."""
        previous = {signum: signal.signal(signum, self.handle) for signum in signals}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the training DataLoader: its workers ignore the stop signals.

    A signal sent to the whole process group (Ctrl-C in a terminal, ``kill -TERM -<pgid>``, Slurm
    signalling every process of a step) also reaches the workers, and torch's worker SIGTERM handler
    re-raises it: a dead worker stops the trainer with "DataLoader worker ... killed by signal" before
    it can checkpoint. Ignoring them is safe: workers still exit when the loader shuts them down or
    when their parent dies (torch watches it).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
