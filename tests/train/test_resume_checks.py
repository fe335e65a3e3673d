"""dinolite/train/resume_checks.py: a resume lists every recipe change against the checkpoint's config."""

from __future__ import annotations

from pathlib import Path

from dinolite.config import load_config, save_config
from dinolite.train.resume_checks import config_changes, report_config_changes


def test_changed_leaves_are_listed_sorted_old_to_new_and_the_output_dir_is_ignored(tmp_path: Path) -> None:
    saved = load_config("demo")
    current = load_config("demo", ["optim.base_lr=0.123", "train.seed=7", f"train.output_dir={tmp_path}"])
    changes = config_changes(saved, current)
    assert changes == [f"optim.base_lr: {saved.optim.base_lr} -> 0.123", f"train.seed: {saved.train.seed} -> 7"]
    assert config_changes(saved, load_config("demo")) == []


def test_the_report_logs_the_changes_against_the_checkpoint_config(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint_00000010"
    checkpoint.mkdir()
    save_config(load_config("demo"), checkpoint / "config.yaml")
    lines: list[str] = []
    changes = report_config_changes(checkpoint, load_config("demo", ["train.seed=99"]), lines.append)
    assert len(changes) == 1 and changes[0].endswith("-> 99")
    assert lines == [
        f"resuming with a config that differs from the one checkpoint_00000010 was written with (1 change(s)): {changes[0]}"
    ]


def test_nothing_to_compare_is_silent_and_an_unreadable_config_is_a_warning(tmp_path: Path) -> None:
    lines: list[str] = []
    assert report_config_changes(None, load_config("demo"), lines.append) == []
    assert report_config_changes(tmp_path, load_config("demo"), lines.append) == [] and lines == []
    (tmp_path / "config.yaml").write_text("optim: {base_lr: [not, a, float]}\n")
    assert report_config_changes(tmp_path, load_config("demo"), lines.append) == []
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: cannot compare the config with {tmp_path / 'config.yaml'}"
    )
