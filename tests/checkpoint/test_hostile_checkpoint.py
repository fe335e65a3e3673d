"""Hostile or damaged run folders (issue 24, items 4, 6 and 7): every case is one row of a table.

A module-scoped run folder of a tiny DINOv2 objective (two real checkpoints, iterations 2 and 4) is copied
for each row, one fault is planted, and the reader the row names must refuse it naming the file and key
(``REFUSED``), fall back to the newest complete checkpoint with a warning naming the file (``FALLBACK``),
or clean it up at the next save (``LEFTOVERS``). Nothing a row claims is ever allocated: ``torch.empty``
refuses anything over 64 MB while a row runs (the old code would have allocated 2.65 GB).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

from dinolite.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    integrity,
    load_consolidated_state_dict,
    method_record,
    read_checkpoint_info,
    resolve_checkpoint_dir,
)
from dinolite.checkpoint.safe_metadata import read_dcp_metadata
from dinolite.commands.export import main as export_main
from dinolite.eval.backbone import load_any_backbone
from tests.checkpoint.tiny_run import make_tiny_run, tiny_manager

ALLOCATION_LIMIT = 64 << 20
DiskUsage = collections.namedtuple("DiskUsage", "total used free")
NEWEST = "iter_00000004"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run(template, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the template run, with every allocation above 64 MB refused."""
    real_empty = torch.empty

    def bounded_empty(*size: Any, **kwargs: Any) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        on_meta = torch.device(kwargs.get("device") or "cpu").type == "meta"
        if torch.Size(shape).numel() * dtype.itemsize > ALLOCATION_LIMIT and not on_meta:
            raise AssertionError(f"allocated {tuple(shape)} from what a file claims")
        return real_empty(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", bounded_empty)
    return Path(shutil.copytree(template, tmp_path / "run"))


def checkpoint(run: Path, name: str = NEWEST) -> Path:
    return run / "checkpoints" / name


# ---------------------------------------------------------------------------------------------- planters


def edit_metadata(key: str, size: Callable[[tuple[int, ...]], tuple[int, ...]], chunk_too: bool) -> Callable:
    """Rewrite ``key``'s global size in every checkpoint's ``.metadata`` (and its one chunk's, if ``chunk_too``)."""

    def plant(run: Path) -> Path:
        for directory in (run / "checkpoints").glob("iter_*"):
            metadata = read_dcp_metadata(directory / ".metadata")
            item = metadata.state_dict_metadata[key]
            new = torch.Size(size(tuple(item.size)))
            chunks = [ChunkStorageMetadata(offsets=item.chunks[0].offsets, sizes=new)] if chunk_too else item.chunks
            metadata.state_dict_metadata[key] = dataclasses.replace(item, size=new, chunks=chunks)
            (directory / ".metadata").write_bytes(pickle.dumps(metadata))
        return run

    return plant


def edit_state(change: Callable[[dict], Any]) -> Callable:
    """Rewrite the newest checkpoint's ``state.json`` with ``change(state)`` (its return value, if not None)."""

    def plant(run: Path) -> Path:
        file = checkpoint(run) / "state.json"
        state = json.loads(file.read_text())
        result = change(state)
        file.write_text(json.dumps(state if result is None else result))
        return checkpoint(run)

    return plant


def expanded_rng(run: Path) -> Path:
    file = checkpoint(run) / "rng" / "rank_00000.pt"
    state = torch.load(file, weights_only=True)
    state["python_state"] = torch.zeros(1, dtype=torch.int64).expand(state["python_state"].shape)
    torch.save(state, file)
    return checkpoint(run)


def resume(path: Path) -> Path:
    manager, app_state = tiny_manager(path.parent.parent)
    manager.load(path, app_state)
    return path


def consolidate(run: Path) -> dict:
    return load_consolidated_state_dict(run, model="teacher", part="backbone")


def export(run: Path) -> None:
    """The export CLI: its one ``error:`` line is raised as the ValueError it printed (for the table)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = export_main(["--checkpoint", str(run), "--output", str(run / "b.safetensors")])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    raise ValueError(lines[0])


POS_EMBED = "model.teacher.backbone.pos_embed"
GIGANTIC = edit_metadata(POS_EMBED, lambda s: (s[0], s[1], 39_000_000), chunk_too=True)  # 2.65 GB claimed


@dataclasses.dataclass(frozen=True)
class Refused:
    plant: Callable[[Path], Path]
    read: Callable[[Path], Any]
    error: type[Exception]
    message: tuple[str, ...]


REFUSED = {
    # item 4: a .metadata claiming more than its shards hold is refused before allocation
    "metadata claims a 2.65 GB tensor: consolidation": Refused(
        GIGANTIC, consolidate, DamagedCheckpointError, (".metadata", POS_EMBED, "inflated")),
    "metadata claims a 2.65 GB tensor: export": Refused(GIGANTIC, export, ValueError, (".metadata", "pos_embed")),
    "metadata chunk covering half the tensor": Refused(
        edit_metadata(POS_EMBED, lambda s: (s[0], 2 * s[1], s[2]), chunk_too=False), consolidate,
        DamagedCheckpointError, (".metadata", POS_EMBED, "covering")),
    "rng file of stride-0 tensors": Refused(expanded_rng, resume, DamagedCheckpointError,
                                            ("rank_00000.pt", "python_state", "claims")),
    # item 7: state.json (the run's record) typed and ranged, file and key named
    "state.json is a list": Refused(edit_state(lambda s: [s]), read_checkpoint_info, DamagedCheckpointError,
                                    ("state.json", "JSON list")),
    "state.json iteration true": Refused(edit_state(lambda s: s.update(iteration=True)), read_checkpoint_info,
                                         DamagedCheckpointError, ("state.json", "iteration=True")),
    "state.json world_size 0": Refused(edit_state(lambda s: s.update(world_size=0)), read_checkpoint_info,
                                       DamagedCheckpointError, ("state.json", "world_size=0")),
    "state.json format 99": Refused(edit_state(lambda s: s.update(format=99)), read_checkpoint_info,
                                    DamagedCheckpointError, ("state.json", "format=99")),
    "method.eval_network 'everything'": Refused(
        edit_state(lambda s: s["method"].update(eval_network="everything")), method_record,
        DamagedCheckpointError, ("state.json", "method.eval_network='everything'")),
    "method.heads a string": Refused(edit_state(lambda s: s["method"].update(heads="dino_head")), method_record,
                                     DamagedCheckpointError, ("state.json", "method.heads='dino_head'")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_hostile_run_folders_are_refused_naming_the_file(run, name):
    case = REFUSED[name]
    target = case.plant(run)
    with pytest.raises(case.error) as info:
        case.read(target)
    for fragment in case.message:
        assert fragment in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------- fallback


def outside_run(run: Path) -> Path:
    """Another run beside this one, with a newer complete checkpoint (iter_00000009)."""
    other = make_tiny_run(run.parent / "other", iterations=(9,))
    return other / "checkpoints" / "iter_00000009"


POINTERS: dict[str, Callable[[Path], bytes]] = {
    "binary garbage": lambda run: b"\xff\xfe\x00\x9c garbage \x80",
    "a relative path outside the folder": lambda run: f"../../{outside_run(run).relative_to(run.parent)}\n".encode(),
    "an absolute path outside the folder": lambda run: f"{outside_run(run)}\n".encode(),
}
READERS: dict[str, Callable[[Path], Path]] = {
    "train (config diff)": lambda run: tiny_manager(run)[0].latest(),
    "train (resume)": lambda run: tiny_manager(run)[0].load_latest_intact(tiny_manager(run)[1], warn=print)[0],
    "export / eval (resolve)": resolve_checkpoint_dir,
    "eval --backbone": lambda run: checkpoint(run, f"iter_{load_any_backbone(run).spec.iteration:08d}"),
}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("pointer", list(POINTERS))
def test_an_invalid_latest_pointer_is_named_and_the_folder_scanned(run, capsys, pointer, reader):
    """One rule for every reader: ``latest`` names a checkpoint beside it, or it is ignored with a warning."""
    latest = run / "checkpoints" / "latest"
    latest.write_bytes(POINTERS[pointer](run))
    assert READERS[reader](run) == checkpoint(run)  # the newest complete one inside, never the other run's
    captured = capsys.readouterr()
    assert f"warning: {latest}: " in captured.err + captured.out


# ---------------------------------------------------------------------------------------------- leftovers


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


LEFTOVERS: dict[str, Callable[[Path], Path]] = {
    ".latest.tmp of a dead process": lambda d: _touch(d / f".latest.tmp{dead_pid()}"),
    "iter_N.tmp of a save killed before its rename": lambda d: _copy(d / NEWEST, d / "iter_00000003.tmp"),
    "iter_N half-deleted by a killed prune": lambda d: _half_delete(_copy(d / NEWEST, d / "iter_00000001")),
    "iter_N.pruned of a killed prune": lambda d: _copy(d / NEWEST, d / "iter_00000001.pruned"),
    "iter_N.old of a killed re-save": lambda d: _copy(d / NEWEST, d / f"{NEWEST}.old"),
}


def _touch(path: Path) -> Path:
    path.write_text("iter_00000003\n")
    return path


def _copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def _half_delete(path: Path) -> Path:
    (path / ".metadata").unlink()
    return path


@pytest.mark.parametrize("leftover", list(LEFTOVERS))
def test_the_next_save_removes_what_killed_saves_and_prunes_left(run, leftover):
    directory = run / "checkpoints"
    planted = LEFTOVERS[leftover](directory)
    manager, app_state = tiny_manager(run)
    manager.save(6, app_state)
    assert not planted.exists()
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["iter_00000002", NEWEST, "iter_00000006", "latest"], names
    assert resolve_checkpoint_dir(run) == checkpoint(run, "iter_00000006")


def test_what_is_not_provably_a_leftover_stays(run):
    """Guards for the cleanup above (these held before it existed): a live process's pointer file,
    foreign files, and an incomplete checkpoint newer than the newest complete one are kept."""
    directory = run / "checkpoints"
    live = subprocess.Popen(["sleep", "60"])
    try:
        kept = [
            _touch(directory / f".latest.tmp{live.pid}"),
            _touch(directory / "notes.txt"),
            _half_delete(_copy(directory / NEWEST, directory / "iter_00000009")),
        ]
        manager, app_state = tiny_manager(run)
        manager.save(6, app_state)
    finally:
        live.kill()
        live.wait()
    assert all(path.exists() for path in kept)


# ---------------------------------------------------------------------------------------------- full disk


def test_a_full_disk_during_the_rng_file_is_named_and_loses_nothing(run, monkeypatch):
    """Item 6: torch's zip writer reports a full disk as ``unexpected pos 704 vs 598`` (no errno) when
    given a path, and the partial checkpoint held the space until it was removed: the old code judged
    the free space after removing it. Modelled here: a disk with no space left while ``iter_*.tmp``
    exists, and a torch.save that fails as the real one does on such a disk (path: the C++ writer's
    error; Python file: ENOSPC)."""
    directory = run / "checkpoints"
    real_save = torch.save

    def full_disk_save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if "rank_" not in str(getattr(target, "name", target)):
            return real_save(obj, target, *args, **kwargs)
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(b"PK\x03\x04" + bytes(594))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        target.write(b"PK\x03\x04" + bytes(594))
        raise OSError(errno.ENOSPC, "No space left on device")

    def disk_usage(path: Any) -> Any:
        free = 0 if any(directory.glob("iter_*.tmp")) else 1 << 30
        return DiskUsage(1 << 31, (1 << 31) - free, free)

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(integrity.shutil, "disk_usage", disk_usage)
    manager, app_state = tiny_manager(run)
    with pytest.raises(CheckpointError, match=f"iteration 6: no space left on {directory}"):
        manager.save(6, app_state)
    assert sorted(p.name for p in directory.iterdir()) == ["iter_00000002", NEWEST, "latest"]
    assert resolve_checkpoint_dir(run) == checkpoint(run)
