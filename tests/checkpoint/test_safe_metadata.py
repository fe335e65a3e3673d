"""Loading a run folder never runs code from it: the DCP ``.metadata`` attack of issue 16, item 1."""

from __future__ import annotations

import builtins
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from dinolite.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    load_consolidated_state_dict,
)
from dinolite.checkpoint.safe_metadata import (
    CheckpointMetadataError,
    UnsafeMetadataError,
    read_dcp_metadata,
)
from dinolite.config import load_config
from dinolite.eval.backbone import load_any_backbone
from dinolite.train.methods.dinov2 import build_objective

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "student.embed_dim=32",
    "student.depth=2",
    "student.num_heads=2",
    "student.patch_size=4",
    "dino.head_n_prototypes=32",
    "dino.head_bottleneck_dim=16",
    "dino.head_hidden_dim=32",
    "ibot.head_n_prototypes=32",
    "ibot.head_bottleneck_dim=16",
    "ibot.head_hidden_dim=32",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
]


class _RunThenReturn:
    """Pickles as ``eval(code, {"META": real_metadata, ...})``: writes a marker file, then evaluates to the
    real metadata, so a plain ``pickle.load`` succeeds as if nothing happened. Only builtins are needed."""

    def __init__(self, metadata, marker: Path):
        self.metadata, self.marker = metadata, marker

    def __reduce__(self):
        code = "(__import__('pathlib').Path(MARKER).write_text('pwned'), META)[1]"
        return builtins.eval, (code, {"MARKER": str(self.marker), "META": self.metadata})


@pytest.fixture()
def run_dir(tmp_path):
    """A genuine dinolite run folder (tiny ViT objective, one checkpoint with config.yaml)."""
    torch.manual_seed(0)
    cfg = load_config("demo", TINY + [f"train.output_dir={tmp_path / 'run'}"])
    objective = build_objective(cfg)
    optimizer = torch.optim.AdamW(objective.student.parameters(), lr=1e-3)
    CheckpointManager(tmp_path / "run", config=cfg).save(1, {"model": objective, "optimizer": optimizer})
    return tmp_path / "run", cfg


def _tamper(checkpoint: Path, marker: Path) -> None:
    metadata_file = checkpoint / ".metadata"
    real = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    with open(metadata_file, "wb") as handle:
        pickle.dump(_RunThenReturn(real, marker), handle)


def test_the_attack_is_real_against_plain_dcp(run_dir, tmp_path):
    """Without the restricted reader DCP runs the payload and loads as if nothing happened."""
    run, _ = run_dir
    checkpoint = run / "checkpoints" / "iter_00000001"
    marker = tmp_path / "marker"
    _tamper(checkpoint, marker)
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    assert marker.read_text() == "pwned"
    assert "model.teacher.backbone.cls_token" in metadata.state_dict_metadata


def test_every_dcp_load_refuses_the_tampered_metadata_and_runs_nothing(run_dir, tmp_path):
    run, cfg = run_dir
    checkpoint = run / "checkpoints" / "iter_00000001"
    good = load_consolidated_state_dict(run)  # the untouched folder loads
    assert "cls_token" in good
    marker = tmp_path / "marker"
    _tamper(checkpoint, marker)

    loads = {
        "consolidation": lambda: load_consolidated_state_dict(run),
        "eval --backbone": lambda: load_any_backbone(run),
        "resume": lambda: load_checkpoint(checkpoint, {"model": build_objective(cfg)}),
    }
    for what, load in loads.items():
        with pytest.raises(UnsafeMetadataError) as info:
            load()
        message = str(info.value)
        assert str(checkpoint / ".metadata") in message, what
        assert "builtins.eval" in message, what
        assert not marker.exists(), f"{what} ran the payload"

    # export CLI in a fresh process: one-line error naming the file and the global, non-zero exit, no marker
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinolite.commands.export",
            "--checkpoint",
            str(run),
            "--output",
            str(tmp_path / "b.safetensors"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert result.returncode != 0, result.stderr
    assert result.stderr.startswith("error: ") and "refused to load global builtins.eval" in result.stderr
    assert not marker.exists() and not (tmp_path / "b.safetensors").exists()


def test_a_byte_entry_is_refused(tmp_path):
    """DCP reads byte entries with full pickle; dinolite stores tensors only, so they are refused."""
    dcp.save({"w": torch.ones(2), "blob": {"a": [1, 2]}}, checkpoint_id=str(tmp_path / "ck"))
    with pytest.raises(UnsafeMetadataError, match="BytesStorageMetadata"):
        read_dcp_metadata(tmp_path / "ck" / ".metadata")


def test_genuine_metadata_round_trips_every_dtype(tmp_path):
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8, torch.bool]
    state = {str(d).split(".")[1]: torch.zeros(3, dtype=d) for d in dtypes}
    dcp.save(state, checkpoint_id=str(tmp_path / "ck"))
    plain = dcp.FileSystemReader(str(tmp_path / "ck")).read_metadata()
    safe = read_dcp_metadata(tmp_path / "ck" / ".metadata")
    assert safe.state_dict_metadata == plain.state_dict_metadata
    assert safe.storage_data == plain.storage_data


@pytest.mark.parametrize("content", [b"", b"\x80\x04\x95garbage"])
def test_empty_or_truncated_metadata_names_the_file(tmp_path, content):
    (tmp_path / ".metadata").write_bytes(content)
    with pytest.raises(CheckpointMetadataError, match=str(tmp_path / ".metadata")):
        read_dcp_metadata(tmp_path / ".metadata")


def test_shard_names_outside_the_folder_are_refused(tmp_path):
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(tmp_path / "ck"))
    metadata = dcp.FileSystemReader(str(tmp_path / "ck")).read_metadata()
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    with open(tmp_path / "ck" / ".metadata", "wb") as handle:
        pickle.dump(metadata, handle)
    with pytest.raises(CheckpointMetadataError, match="elsewhere.distcp"):
        read_dcp_metadata(tmp_path / "ck" / ".metadata")
