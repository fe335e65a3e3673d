"""Resume never loses a run: damaged checkpoints fall back, a full disk is named, replayed iterations are
logged once, config changes are listed and architecture changes refused (issue 16, items 10 and 12)."""

from __future__ import annotations

import errno
import json
import logging

import pytest
import torch
from test_loop import fake_stream, tiny_config, train
from torch.distributed.checkpoint import FileSystemWriter

from dinolite.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    DamagedCheckpointError,
    integrity,
    load_consolidated_state_dict,
    manager,
)
from dinolite.commands.export import main as export_main
from dinolite.train.logging import LOGGER_NAME

BASE = ("train.checkpoint_every=2", "train.keep_last_checkpoints=3", "train.log_every=1")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture()
def console_lines():
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _weights(run):
    return load_consolidated_state_dict(run, model="student", part=None)


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _shard(checkpoint):
    return sorted(checkpoint.glob("*.distcp"))[0]


@pytest.fixture(scope="module")
def reference_6(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref6")
    torch.set_num_threads(1)
    assert train(tiny_config(out, *BASE, "train.max_iterations=6")).iteration == 6
    return out


@pytest.mark.parametrize("damage", ["truncated_shard", "empty_metadata", "missing_shard", "broken_state"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, reference_6, console_lines, damage):
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=4"))
    damaged = tmp_path / "checkpoints" / "iter_00000004"
    if damage == "truncated_shard":
        shard = _shard(damaged)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        named = shard.name
    elif damage == "empty_metadata":
        (damaged / ".metadata").write_bytes(b"")
        named = ".metadata"
    elif damage == "missing_shard":
        _shard(damaged).unlink()
        named = ".distcp: missing"
    else:
        (damaged / "state.json").write_text("{")
        named = "state.json"
    result = train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"))
    assert result.status == "finished" and result.iteration == 6
    warnings = [line for line in console_lines if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and named in warnings[0], warnings
    assert any(f"resumed from {tmp_path / 'checkpoints' / 'iter_00000002'}" in line for line in console_lines)
    _assert_same_weights(tmp_path, reference_6)  # iterations 3-6 replayed exactly


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path):
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=4"))
    for checkpoint in (tmp_path / "checkpoints").glob("iter_*"):
        (checkpoint / ".metadata").write_bytes(b"\x80")
    with pytest.raises(DamagedCheckpointError, match="no intact checkpoint") as info:
        train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"))
    assert "iter_00000002/.metadata" in str(info.value) and "iter_00000004/.metadata" in str(info.value)


def test_consolidation_of_a_truncated_shard_names_the_file(tmp_path, capsys):
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=2"))
    shard = _shard(tmp_path / "checkpoints" / "iter_00000002")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DamagedCheckpointError, match=f"{shard}: truncated"):
        load_consolidated_state_dict(tmp_path)
    capsys.readouterr()
    assert export_main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "b.safetensors")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{shard}: truncated" in err and err.count("\n") == 1


def test_full_disk_cleans_the_temp_folder_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original = FileSystemWriter.write_data
    calls = {"n": 0}

    def write_data(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (iteration 4)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FileSystemWriter, "write_data", write_data)
    with pytest.raises(CheckpointError) as info:
        train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"))
    assert f"no space left on {tmp_path / 'checkpoints'}" in str(info.value)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_00000002", "latest"], names  # no iter_00000004.tmp left behind
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter_00000002"


def test_replayed_iterations_are_logged_once(tmp_path):
    def crashing_stream(request):
        for index, batch in enumerate(fake_stream(request), request.start_batch):
            if index == 3:
                raise RuntimeError("crash after iteration 3 was logged")
            yield batch

    with pytest.raises(RuntimeError, match="crash"):
        train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"), batches=crashing_stream)
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 3 in logged  # logged by the crashed run, checkpoint only at 2
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_iterations = [r["iteration"] for r in records if "loss" in r]
    assert train_iterations == [1, 2, 3, 4, 5, 6]


def test_changed_recipe_is_listed_and_architecture_change_refused(tmp_path, console_lines):
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=2"))
    train(tiny_config(tmp_path, *BASE, "train.max_iterations=4", "optim.base_lr=0.001"))
    changes = [line for line in console_lines if "differs from the one iter_00000002 was written with" in line]
    assert len(changes) == 1
    assert "optim.base_lr: 0.004 -> 0.001" in changes[0] and "train.max_iterations: 2 -> 4" in changes[0]

    config_before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ArchitectureMismatchError) as info:
        train(tiny_config(tmp_path, *BASE, "train.max_iterations=6", "student.embed_dim=32"))
    message = str(info.value)
    assert "iter_00000004" in message and "new output directory" in message
    assert "(32,) -> (16,)" in message or "(16,) -> (32,)" in message
    assert (tmp_path / "config.yaml").read_text() == config_before  # the refused config is not written


def test_torch_save_failure_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch's own writer reports a full disk as 'enforce fail at inline_container.cc' (no errno): the free
    space after the failure decides."""
    calls = {"n": 0}
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        name = str(getattr(path, "name", path))  # a path, or the file the RNG state is written through
        calls["n"] += name.endswith(".pt")  # DCP's shard writer calls torch.save too
        if calls["n"] == 2 and name.endswith(".pt"):  # the RNG file of the second checkpoint
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(manager.torch, "save", failing_save)
    monkeypatch.setattr(integrity.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 4096})())
    with pytest.raises(
        CheckpointError, match=f"iteration 4: no space left on {tmp_path / 'checkpoints'}; 4096 bytes free"
    ):
        train(tiny_config(tmp_path, *BASE, "train.max_iterations=6"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00000002", "latest"]
