"""One run per output directory (issue 16, item 3): a second run fails at start-up, the first is unaffected.
A held flock means alive, whatever the recorded pid looks like from here (issue 24, item 2)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_stop_signals import _launch, _logged_iteration

from dinolite.jobs.run_lock import LOCK_FILE, RunLock, RunLockError, hold_run_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01 00:00:00 UTC", **fields}
    (directory / LOCK_FILE).write_text(json.dumps(info))
    return info


def test_second_lock_is_refused_and_release_frees_the_folder(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(RunLockError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message and "another train.output_dir" in message
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    second = RunLock(tmp_path)
    assert second.acquire() is None
    second.release()


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    lock = RunLock(tmp_path)
    warning = lock.acquire()
    assert warning is not None and f"pid {pid}" in warning and socket.gethostname() in warning
    assert "no such process" in warning
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.info["token"]
    lock.release()


def test_reused_pid_and_requeued_slurm_job_are_stale(tmp_path, monkeypatch):
    # our own (alive) pid, but recorded with another process start time: the pid was reused
    _write_lock(tmp_path / "a", pid=os.getpid(), process_start="1")
    warning = RunLock(tmp_path / "a").acquire()
    assert warning and "another process" in warning
    # an earlier run of this Slurm job on another node (requeue keeps the job id, counts restarts)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    _write_lock(tmp_path / "b", host="node-elsewhere", pid=123, slurm_job_id="77", slurm_restart_count=1)
    warning = RunLock(tmp_path / "b").acquire()
    assert warning and "requeued Slurm job" in warning and "node-elsewhere" in warning


def test_lock_from_another_host_is_refused_with_instructions(tmp_path):
    _write_lock(tmp_path, host="node-elsewhere", pid=4321)
    with pytest.raises(RunLockError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert "host node-elsewhere, pid 4321" in message and f"delete {tmp_path / LOCK_FILE}" in message
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-elsewhere"  # left alone


def test_only_rank_0_takes_the_lock(tmp_path):
    with hold_run_lock(tmp_path, is_main=False, device="cpu"):
        assert not (tmp_path / LOCK_FILE).exists()
    with hold_run_lock(tmp_path, is_main=True, device="cpu"):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.slow
def test_second_run_on_the_same_folder_fails_at_start_up_and_the_first_is_unaffected(tmp_path):
    run = tmp_path / "run"
    first = _launch(run, None, extra=("train.max_iterations=100000",))
    deadline = time.monotonic() + 400
    while _logged_iteration(run) < 2:
        assert first.poll() is None, first.communicate()[0][-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    config_before = (run / "config.yaml").read_bytes()
    second = _launch(run, None, extra=("optim.base_lr=0.1",))
    log, _ = second.communicate(timeout=300)
    assert second.returncode == 1, log[-3000:]
    assert f"is in use by another run (host {socket.gethostname()}, pid {first.pid}" in log, log[-3000:]
    assert (run / "config.yaml").read_bytes() == config_before
    assert first.poll() is None  # still training
    refused_at = _logged_iteration(run)
    while _logged_iteration(run) < refused_at + 2:
        assert first.poll() is None, first.communicate()[0][-4000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and "run again to continue" in log, log[-4000:]
    stopped_at = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert stopped_at >= refused_at + 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"iter_{stopped_at:08d}", "latest"]
    assert not (run / LOCK_FILE).exists()


def test_unwritable_output_directory_is_a_lock_error(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(RunLockError, match=f"cannot create the lock file {tmp_path / LOCK_FILE}: .*Permission denied"):
        with hold_run_lock(tmp_path, is_main=True, device="cpu"):
            pass


# A live run whose lock JSON, read from here, looks dead: what a run in another PID namespace with the same
# host name (a container with host networking, Apptainer, Podman) shows. Each row: what its record says.
LIVE_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, sys.argv[2].encode())
print("holding", flush=True)
time.sleep(600)
"""
LOOKS_DEAD = [
    pytest.param(lambda: {"pid": _dead_pid()}, id="a pid that does not exist here"),
    pytest.param(lambda: {"pid": os.getpid(), "process_start": "1"}, id="a pid that is another process here"),
    pytest.param(lambda: {"pid": os.getpid(), "boot_id": "another-boot"}, id="another boot id"),
    pytest.param(
        lambda: {"pid": 123, "host": "node-elsewhere", "slurm_job_id": "77", "slurm_restart_count": 0},
        id="an earlier run of this requeued Slurm job",
    ),
]


@pytest.mark.parametrize("record", LOOKS_DEAD)
def test_a_live_holder_of_the_flock_is_never_taken_over(tmp_path, monkeypatch, record):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    info = {"host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC", **record()}
    holder = subprocess.Popen(
        [sys.executable, "-c", LIVE_HOLDER, str(tmp_path / LOCK_FILE), json.dumps(info)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockError) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"is in use by another run (host {info['host']}, pid {info['pid']}" in message
        assert "holds the lock's flock, so it is running" in message
        assert json.loads((tmp_path / LOCK_FILE).read_text()) == info  # left as it was
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_without_flock_on_the_filesystem_pid_evidence_is_not_trusted(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    _write_lock(tmp_path / "a", pid=_dead_pid())
    with pytest.raises(RunLockError, match=r"this filesystem has no flock.*delete .*\.dinolite\.lock"):
        RunLock(tmp_path / "a").acquire()
    # the scheduler's word still counts: a requeued Slurm job takes over its earlier run's lock
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    _write_lock(tmp_path / "b", host="node-elsewhere", pid=123, slurm_job_id="77", slurm_restart_count=1)
    lock = RunLock(tmp_path / "b")
    assert "requeued Slurm job" in lock.acquire()
    lock.release()


def test_a_live_holder_with_an_unreadable_record_is_still_in_use(tmp_path):
    path = tmp_path / LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", LIVE_HOLDER, str(path), "not json"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        old = time.time() - 3600  # not a lock being written: its record is just unreadable
        os.utime(path, (old, old))
        with pytest.raises(
            RunLockError, match=r"is in use by another process: it holds the flock of .*not a dinolite lock"
        ):
            RunLock(tmp_path).acquire()
        assert path.read_text() == "not json"
    finally:
        holder.kill()
        holder.wait()
