"""dinolite/io.py: atomic writes leave either the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dinolite.io import write_atomic, write_json_atomic, write_text_atomic


def test_text_lands_complete_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "notes.txt"
    assert write_text_atomic(target, "hello\n") == target
    assert target.read_text() == "hello\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.txt"]  # no temporary file left


def test_a_failing_writer_keeps_the_previous_version_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old\n")

    def half_write(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_write)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_temporary_keeps_the_suffix_and_is_hidden_beside_the_target(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"png")

    write_atomic(tmp_path / "figure.png", write, fsync=True)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".figure.") and seen[0].suffix == ".png"
    assert (tmp_path / "figure.png").read_bytes() == b"png"


def test_a_private_temporary_becomes_a_file_with_the_umask_mode(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    write_atomic(tmp_path / "x.bin", lambda tmp: (tmp.write_bytes(b"1"), tmp.chmod(0o600)))
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_json_is_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    target = write_json_atomic(tmp_path / "r.json", {"b": [1, 2]})
    text = target.read_text()
    assert json.loads(text) == {"b": [1, 2]} and text.endswith("}\n") and '\n  "b"' in text
    assert write_json_atomic(tmp_path / "c.json", {"a": 1}, indent=None).read_text() == '{"a": 1}\n'
