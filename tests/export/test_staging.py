"""An export is written all or nothing: staged beside the output, moved into place only when complete."""

from __future__ import annotations

import errno

import pytest

from dinolite.export.errors import ExportWriteError
from dinolite.export.staging import staged_output


def test_a_complete_export_lands_at_its_names_and_leaves_no_stage(tmp_path):
    output = tmp_path / "exports" / "model.safetensors"
    with staged_output(output) as staged:
        assert staged.name == output.name and staged.parent != output.parent
        staged.write_bytes(b"weights")
        (staged.parent / "hf").mkdir()
        (staged.parent / "hf" / "config.json").write_text("{}")
        assert not output.exists()  # nothing at the final names before the end
    assert output.read_bytes() == b"weights"
    assert (output.parent / "hf" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in output.parent.iterdir()) == ["hf", "model.safetensors"]


def test_a_users_other_files_in_a_folder_it_writes_into_stay(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with staged_output(tmp_path / "model.safetensors") as staged:
        (staged.parent / "hf").mkdir()
        (staged.parent / "hf" / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "notes.txt"]


def test_a_full_disk_removes_everything_the_export_created_and_names_the_folder(tmp_path):
    output = tmp_path / "new" / "deeper" / "model.safetensors"
    with pytest.raises(ExportWriteError, match=f"no space left on {tmp_path / 'new' / 'deeper'}"):
        with staged_output(output) as staged:
            staged.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too


def test_a_read_only_folder_is_named_and_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(ExportWriteError, match=f"{tmp_path} is read-only"):
        with staged_output(tmp_path / "model.pt"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(KeyError, match="not a write failure"):
        with staged_output(tmp_path / "model.pt"):
            raise KeyError("not a write failure")
    assert list(tmp_path.iterdir()) == []
