"""What a resume tells the user: how the config differs from the one the checkpoint was written with.

Architecture changes are refused by the checkpoint loader itself (the saved keys and shapes are compared
with the model this config builds: :class:`dinolite.checkpoint.ArchitectureMismatchError`); everything else
(lr, batch size, schedules, ...) is allowed and listed, so a changed recipe never goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dinolite.checkpoint import CONFIG_FILE
from dinolite.config import Config, ConfigError, load_config, to_dict

# Keys whose change says nothing about the recipe (the folder may have been moved).
IGNORED_KEYS = ("train.output_dir",)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: Config, current: Config) -> list[str]:
    """``"key: old -> new"`` for every leaf that differs (lists compared whole), sorted by key."""
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(current))
    return [
        f"{key}: {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}"
        for key in sorted(set(old) | set(new))
        if key not in IGNORED_KEYS and old.get(key) != new.get(key)
    ]


def report_config_changes(checkpoint: Path | None, cfg: Config, log: Callable[[str], None]) -> list[str]:
    """Log the differences between ``cfg`` and ``checkpoint``'s ``config.yaml``; returns them."""
    if checkpoint is None or not (checkpoint / CONFIG_FILE).is_file():
        return []
    try:
        saved = load_config(checkpoint / CONFIG_FILE)
    except ConfigError as exc:
        log(f"warning: cannot compare the config with {checkpoint / CONFIG_FILE}: {exc}")
        return []
    changes = config_changes(saved, cfg)
    if changes:
        log(
            f"resuming with a config that differs from the one {checkpoint.name} was written with "
            f"({len(changes)} change(s)): " + "; ".join(changes)
        )
    return changes
