"""One run per output directory: an exclusive lock file taken before anything is written there.

``<output_dir>/.dinolite.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems, on NFSv3+
and on Lustre); its creator takes an ``flock`` on it at once, holds it for the life of the run, and writes
JSON into it: host, pid, the process's start time (``/proc/<pid>/stat``), the boot id, the Slurm job id and
restart count, the start date and the command line.

A lock already there is judged by its flock first, by what its JSON says second:

- **flock held** -> the holder is alive, full stop: start-up fails naming its host, pid and start date,
  whatever its pid looks like from here (a run in another PID namespace with the same host name --
  containers with host networking, Apptainer/Podman -- shows a pid that does not exist, or belongs to
  another process, on this side);
- **flock free** and the holder provably dead -> taken over with a warning naming the dead holder's
  host and pid. Provably dead: same host and (no such pid, or a pid whose start time or boot id
  differs: the pid was reused), or the same Slurm job id with a lower restart count (an earlier
  incarnation of this requeued job: Slurm has ended it). Take-over renames the stale file away, checks
  that what it moved is the file it judged stale, and then competes with ``O_EXCL`` again, so two runs
  starting at once cannot both win;
- **flock free** without such evidence (e.g. a holder on another host) -> refused, as live;
- **no flock on this filesystem** (``ENOSYS``: Lustre mounted ``-o noflock``; ``ENOLCK``: NFSv3 without
  its lock manager; ``EOPNOTSUPP``) -> nothing can show that the holder is alive, so pid evidence is not
  trusted and the lock is refused; only the scheduler's word (the requeued Slurm job above) takes it over.

Under torchrun / Slurm only rank 0 takes the lock (:func:`hold_run_lock`); all ranks agree on the result.

Network filesystems (what holds, and what the user must do: docs/checkpoints.md). On NFSv4, NFSv3 with
its lock manager, and Lustre mounted ``-o flock``, flock is seen from every node and the rules above hold
across nodes. Where flock is local to a node (Lustre ``-o localflock``, NFS ``nolock``, ``local_lock=flock``
or ``local_lock=all``) a live holder on *another node* leaves the flock free here: the lock still refuses it
(another host is never taken over on pid evidence), but two nodes that share one host name are not told
apart -- give every node its own host name, or put ``train.output_dir`` where flock is coherent. Not
guaranteed: a holder on another host that died without releasing (node crash) is never taken over
automatically (delete the file, as the message says); filesystems without atomic exclusive create (NFSv2)
give no exclusion.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from dinolite.distributed import any_rank

LOCK_FILE = ".dinolite.lock"
# flock(2) errors that mean "this filesystem has no flock" (not "someone holds it").
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
_REQUEUED = "an earlier run of this requeued Slurm job"


class RunLockError(RuntimeError):
    """The output directory is in use by another run (or its lock cannot be judged); says what to do."""


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _describe(info: dict) -> str:
    return f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}"


class RunLock:
    """The lock of one output directory; :meth:`acquire` returns a warning when it took over a stale lock."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "boot_id": _boot_id(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
            "token": uuid.uuid4().hex,
        }
        self._fd: int | None = None

    # ---- judging a lock that is already there --------------------------------------------------

    def _stale_reason(self, holder: dict) -> str | None:
        """Why ``holder`` is provably dead, or None when it may be alive."""
        me = self.info
        if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
            if int(holder.get("slurm_restart_count") or 0) < me["slurm_restart_count"]:
                return _REQUEUED
        if holder.get("host") != me["host"]:
            return None
        if holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"]:
            return "the host has rebooted since"
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return "no such process"
        start = holder.get("process_start")
        if start is not None and _process_start(pid) not in (None, start):
            return "that pid now belongs to another process"
        return None

    def _read_holder(self) -> dict | None:
        for _ in range(20):  # the holder may be between O_EXCL and writing its JSON
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                if time.time() - self.path.stat().st_mtime > 10:
                    raise RunLockError(
                        f"{self.path} exists but is not a dinolite lock (unreadable JSON); if no run uses "
                        f"{self.output_dir}, delete it and start again"
                    ) from None
                time.sleep(0.1)
                continue
            if not isinstance(loaded, dict):
                raise RunLockError(
                    f"{self.path} exists but is not a dinolite lock (JSON {type(loaded).__name__}, not an object); "
                    f"if no run uses {self.output_dir}, delete it and start again"
                )
            return loaded
        raise RunLockError(f"{self.path}: the lock is being written by another process for too long")

    def _read_holder_of_live_lock(self) -> dict | None:
        """:meth:`_read_holder`; a lock whose record cannot be read is still in use while its flock is held."""
        try:
            return self._read_holder()
        except RunLockError as unreadable:
            if self._flock_state(None) == "held":
                raise RunLockError(
                    f"{self.output_dir} is in use by another process: it holds the flock of {self.path}, whose "
                    f"record cannot be read ({unreadable}). Use another train.output_dir, or stop that process first"
                ) from None
            raise

    def _flock_state(self, holder: dict | None) -> str:
        """``held`` (the holder is alive), ``free`` (the flock could be taken: the holder does not hold
        it, or holds it on another node where flock is node-local), ``unsupported`` (no flock on this
        filesystem) or ``changed`` (the file was replaced or removed meanwhile: judge again)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return "changed"
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            except OSError as exc:
                if exc.errno in _NO_FLOCK:
                    return "unsupported"
                raise
            # Taken: the holder does not hold it. Released at close, before any take-over.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                same = same and (holder is None or self._read_holder() == holder)
            except FileNotFoundError:
                same = False
            return "free" if same else "changed"
        finally:
            os.close(fd)

    def _refusal(self, holder: dict, why: str, what_to_do: str) -> RunLockError:
        return RunLockError(
            f"{self.output_dir} is in use by another run ({_describe(holder)}; lock file {self.path}): {why}. "
            f"Use another train.output_dir; {what_to_do}"
        )

    def _judge(self, holder: dict) -> str | None:
        """Why the lock of ``holder`` may be taken over; raises :class:`RunLockError` when it may not;
        ``None`` when the file changed meanwhile (judge again)."""
        state = self._flock_state(holder)
        if state == "changed":
            return None
        if state == "held":
            raise self._refusal(
                holder,
                "that process holds the lock's flock, so it is running (even where its pid does not show from "
                "here: another container or PID namespace)",
                "or stop that run first",
            )
        reason = self._stale_reason(holder)
        if state == "unsupported" and reason != _REQUEUED:
            raise self._refusal(
                holder,
                "this filesystem has no flock, so whether that run still lives cannot be checked and its lock is "
                "never taken over automatically",
                f"if that run is gone, delete {self.path} and start again (docs/checkpoints.md: network filesystems)",
            )
        if reason is None:
            raise self._refusal(
                holder,
                "it cannot be shown to have ended (its flock is free here, but flock may be local to a node)",
                f"if that run is gone (e.g. its node crashed), delete {self.path} and start again",
            )
        return reason

    def _take_over(self, holder: dict) -> bool:
        """Move a stale lock aside; False when someone else changed it in the meantime (start over)."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{self.info['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = json.loads(aside.read_text())
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved != holder:  # another run replaced the stale lock first: put its lock back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    # ---- acquire / release -----------------------------------------------------------------------

    def acquire(self) -> str | None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        warning = None
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder_of_live_lock()
                reason = self._judge(holder) if holder is not None else None
                if reason is not None and self._take_over(holder):
                    warning = f"took over the stale lock {self.path} of {_describe(holder)}: {reason}"
                continue
            try:  # the flock before the JSON: whoever can read who holds the lock finds the flock held
                self._flock_own(fd)
                os.write(fd, (json.dumps(self.info) + "\n").encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            self._fd = fd
            return warning
        raise RunLockError(f"{self.path}: could not take the lock (other runs keep replacing it)")

    def _flock_own(self, fd: int) -> None:
        """flock the lock file this process just created; a filesystem without flock leaves O_EXCL alone."""
        for _ in range(100):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:  # another process is judging it this instant (an older dinolite): wait
                time.sleep(0.01)
            except OSError as exc:
                if exc.errno in _NO_FLOCK:
                    return
                raise
        raise RunLockError(f"{self.path}: another process keeps the flock of the lock file this run just created")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if json.loads(self.path.read_text()).get("token") == self.info["token"]:
                self.path.unlink()
        except (OSError, json.JSONDecodeError):
            pass  # gone or replaced by someone who judged us dead: not ours to delete
        os.close(self._fd)
        self._fd = None


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def hold_run_lock(
    output_dir: str | Path, is_main: bool, device: torch.device | str, warn: Callable[[str], None] = _warn
) -> Iterator[None]:
    """Rank 0 holds the output directory's lock for the block; every rank raises :class:`RunLockError`
    when rank 0 could not take it (agreed by all-reduce, so no rank starts training alone)."""
    lock = RunLock(output_dir) if is_main else None
    failure: RunLockError | None = None
    if lock is not None:
        try:
            warning = lock.acquire()
            if warning:
                warn(f"warning: {warning}")
        except RunLockError as exc:
            failure = exc
        except OSError as exc:  # read-only or missing permissions: say so on every rank, do not hang them
            failure = RunLockError(f"cannot create the lock file {lock.path}: {exc}")
    if any_rank(failure is not None, device):
        raise failure or RunLockError(f"{output_dir}: rank 0 could not lock the output directory (see its message)")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
