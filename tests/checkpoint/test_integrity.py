"""Checkpoint failures name their cause: a missing or truncated shard, another architecture, a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from dinolite.checkpoint.errors import ArchitectureMismatchError, DamagedCheckpointError
from dinolite.checkpoint.integrity import check_architecture, check_shard_files, describe_save_failure

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _saved(path: Path) -> object:
    dcp.save({"model.weight": torch.ones(4, 3), "model.bias": torch.zeros(4)}, checkpoint_id=path, no_dist=True)
    return FileSystemReader(path).read_metadata()


def test_intact_shards_pass_and_a_truncated_or_missing_one_is_named(tmp_path):
    metadata = _saved(tmp_path)
    check_shard_files(tmp_path, metadata)
    shard = sorted(tmp_path.glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:8])
    with pytest.raises(DamagedCheckpointError, match=f"{shard}: truncated \\(8 bytes"):
        check_shard_files(tmp_path, metadata)
    shard.unlink()
    with pytest.raises(DamagedCheckpointError, match=f"{shard}: missing"):
        check_shard_files(tmp_path, metadata)


def test_the_same_architecture_passes_and_another_names_the_differing_keys(tmp_path):
    metadata = _saved(tmp_path)
    check_architecture(tmp_path, metadata, {"model.weight": torch.empty(4, 3), "model.bias": torch.empty(4)})
    with pytest.raises(ArchitectureMismatchError) as caught:
        check_architecture(tmp_path, metadata, {"model.weight": torch.empty(8, 3), "model.scale": torch.empty(4)})
    message = str(caught.value)
    assert str(tmp_path) in message
    assert all(key in message for key in ("model.weight", "model.scale", "model.bias"))


def test_a_full_disk_anywhere_in_the_failure_chain_is_reported_as_one(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as low:
            raise RuntimeError("rank 0 failed") from low
    except RuntimeError as wrapped:
        failure = wrapped
    assert describe_save_failure(failure, tmp_path).startswith(f"no space left on {tmp_path}")
    assert describe_save_failure(RuntimeError("writer said: os error 28"), tmp_path).startswith("no space left")


def test_other_failures_keep_their_type_and_message(tmp_path):
    message = describe_save_failure(PermissionError("read-only file system"), tmp_path)
    assert message == f"could not write a checkpoint in {tmp_path}: PermissionError: read-only file system"
    assert describe_save_failure(None, tmp_path) == "failed on another rank"
