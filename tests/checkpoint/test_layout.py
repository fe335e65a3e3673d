"""Checkpoint layout: iteration names, what makes a checkpoint complete, and the ``latest`` pointer rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.checkpoint.layout import (
    STATE_FILE,
    complete_checkpoints,
    is_complete_checkpoint,
    iteration_dirname,
    latest_checkpoint,
    read_latest_pointer,
)


def _checkpoint(directory: Path, iteration: int, complete: bool = True) -> Path:
    path = directory / iteration_dirname(iteration)
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"x")
    if complete:
        (path / STATE_FILE).write_text("{}")
    return path


def test_iteration_names_are_zero_padded_so_they_sort_as_text():
    assert iteration_dirname(7) == "iter_00000007"
    assert sorted(iteration_dirname(i) for i in (10, 9, 100)) == [iteration_dirname(i) for i in (9, 10, 100)]


def test_a_checkpoint_is_complete_only_with_metadata_and_state(tmp_path):
    assert is_complete_checkpoint(_checkpoint(tmp_path, 1))
    assert not is_complete_checkpoint(_checkpoint(tmp_path, 2, complete=False))
    (tmp_path / "only_state").mkdir()
    (tmp_path / "only_state" / STATE_FILE).write_text("{}")
    assert not is_complete_checkpoint(tmp_path / "only_state")


def test_complete_checkpoints_are_listed_oldest_first_by_number(tmp_path):
    for iteration in (100, 9, 10):
        _checkpoint(tmp_path, iteration)
    _checkpoint(tmp_path, 200, complete=False)
    (tmp_path / "iter_00000300.tmp").mkdir()
    (tmp_path / "iter_abc").mkdir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == [iteration_dirname(i) for i in (9, 10, 100)]
    assert complete_checkpoints(tmp_path / "missing") == []


def test_the_pointer_names_a_directory_beside_it(tmp_path):
    (tmp_path / "latest").write_text("iter_00000004\n")
    assert read_latest_pointer(tmp_path) == "iter_00000004"
    assert read_latest_pointer(tmp_path / "none") is None


@pytest.mark.parametrize("content", [b"../other/iter_00000004", b"/abs/iter_4", b"\xff\xfe\x00", b"iter_" + b"1" * 80])
def test_a_pointer_that_is_not_a_plain_name_is_ignored_and_named_once(tmp_path, content):
    (tmp_path / "latest").write_bytes(content)
    warnings: list[str] = []
    assert read_latest_pointer(tmp_path, warnings.append) is None
    assert read_latest_pointer(tmp_path, warnings.append) is None
    assert len(warnings) == 1 and str(tmp_path / "latest") in warnings[0]


def test_latest_follows_the_pointer_and_scans_when_it_is_stale(tmp_path):
    older, newer = _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 4)
    (tmp_path / "latest").write_text(older.name)
    assert latest_checkpoint(tmp_path) == older  # the pointer wins while it names a complete checkpoint
    (tmp_path / "latest").write_text(iteration_dirname(6))  # deleted or never finished
    assert latest_checkpoint(tmp_path) == newer
    assert latest_checkpoint(tmp_path / "empty") is None
