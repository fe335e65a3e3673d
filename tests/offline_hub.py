"""huggingface_hub without the network, for the tests of ``hf-hub:`` sources and ``--push-to-hub``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repository(cache: Path, repo_id: str, files: Path) -> Path:
    """Copy the folder ``files`` into huggingface_hub's cache layout, as a download leaves it
    (``models--ORG--NAME/snapshots/<revision>``, ``refs/main``); returns the snapshot folder."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for item in files.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(REVISION)
    return snapshot


def read_cache_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads ``cache`` and nothing else (``HF_HUB_OFFLINE=1``), in this process and its children."""
    hub = importlib.import_module("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def record_uploads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """``HfApi.create_repo`` / ``upload_folder`` record their keyword arguments instead of calling the Hub."""
    hub = importlib.import_module("huggingface_hub")
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(hub.HfApi, "create_repo", lambda self, **kw: calls.append(("create_repo", kw)))
    monkeypatch.setattr(hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or "url")
    return calls
