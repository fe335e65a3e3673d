"""What killed saves and prunes leave behind is removed; complete checkpoints never are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dinolite.checkpoint.layout import STATE_FILE, iteration_dirname
from dinolite.checkpoint.leftovers import remove_leftovers


def _folder(path: Path, complete: bool) -> Path:
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"x")
    if complete:
        (path / STATE_FILE).write_text("{}")
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_and_pruned_folders_and_dead_pointer_temps_are_removed(tmp_path):
    keep = _folder(tmp_path / iteration_dirname(4), complete=True)
    tmp = _folder(tmp_path / f"{iteration_dirname(6)}.tmp", complete=True)  # complete, but not under its name
    pruned = _folder(tmp_path / f"{iteration_dirname(2)}.pruned", complete=False)
    pointer_temp = tmp_path / f".latest.tmp{_dead_pid()}"
    pointer_temp.write_text(keep.name)
    said: list[str] = []
    removed = remove_leftovers(tmp_path, keep_last=3, warn=said.append)
    assert sorted(removed) == sorted([tmp, pruned, pointer_temp])
    assert keep.is_dir() and not tmp.exists() and not pruned.exists() and not pointer_temp.exists()
    assert len(said) == 1 and str(tmp_path) in said[0]


def test_a_pointer_temp_of_a_live_process_stays(tmp_path):
    live = tmp_path / f".latest.tmp{__import__('os').getpid()}"
    live.write_text("iter_00000001")
    assert remove_leftovers(tmp_path, keep_last=3, warn=lambda _: None) == []
    assert live.is_file()


def test_an_old_copy_is_removed_beside_its_checkpoint_and_restored_without_it(tmp_path):
    _folder(tmp_path / iteration_dirname(4), complete=True)
    stale = _folder(tmp_path / f"{iteration_dirname(4)}.old", complete=True)
    only_copy = _folder(tmp_path / f"{iteration_dirname(8)}.old", complete=True)
    removed = remove_leftovers(tmp_path, keep_last=3, warn=lambda _: None)
    assert removed == [stale]
    assert not only_copy.exists() and (tmp_path / iteration_dirname(8) / STATE_FILE).is_file()


def test_incomplete_older_checkpoints_go_only_when_pruning_is_on(tmp_path):
    half_deleted = _folder(tmp_path / iteration_dirname(2), complete=False)
    _folder(tmp_path / iteration_dirname(4), complete=True)
    newer_incomplete = _folder(tmp_path / iteration_dirname(6), complete=False)
    assert remove_leftovers(tmp_path, keep_last=0, warn=lambda _: None) == []  # keep-all: never pruned
    assert remove_leftovers(tmp_path, keep_last=2, warn=lambda _: None) == [half_deleted]
    assert newer_incomplete.is_dir()  # newer than the newest complete one: not provably a prune's debris


def test_a_missing_folder_has_no_leftovers(tmp_path):
    assert remove_leftovers(tmp_path / "none", keep_last=3) == []
