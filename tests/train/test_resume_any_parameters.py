"""Checkpoints resume any parameter set: parameters that never received a gradient have no AdamW state.

The DINOv2 case of issue 12: ``ibot.separate_head=true ibot.loss_weight=0`` trains a separate iBOT head
that no loss reaches, so AdamW never creates its moments; the run must still checkpoint and resume,
and the resumed run must equal the uninterrupted one bit for bit (including the head that never moves
and the absence of its optimizer state).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.checkpoint.safe_metadata import SafeFileSystemReader
from dinolite.config import load_config
from tests.train.test_loop import TINY, train

NO_IBOT_LOSS = ["ibot.separate_head=true", "ibot.loss_weight=0"]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config(run_dir: Path, *extra: str):
    return load_config("demo", [*TINY, *NO_IBOT_LOSS, f"train.output_dir={run_dir}", *extra])


def everything(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Student, teacher, centres: the whole model tree of a checkpoint, consolidated."""
    state = {}
    for network in ("student", "teacher"):
        state.update({f"{network}.{k}": v for k, v in load_consolidated_state_dict(checkpoint, network, None).items()})
    state.update({f"extra.{k}": v for k, v in load_consolidated_state_dict(checkpoint, "objective", "extra").items()})
    return state


@pytest.mark.numerics
def test_untrained_separate_ibot_head_checkpoints_and_resumes_bitwise(tmp_path):
    straight = train(config(tmp_path / "straight"))
    first = train(config(tmp_path / "split", "train.max_iterations=3"))
    assert first.status == "finished" and first.iteration == 3
    resumed = train(config(tmp_path / "split"))
    assert resumed.status == "finished" and resumed.iteration == straight.iteration == 8

    a, b = everything(straight.checkpoint_path), everything(resumed.checkpoint_path)
    assert sorted(a) == sorted(b) and any(k.startswith("student.ibot_head.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The iBOT head got no gradient: it is still the initial one, and the optimizer holds no state for it.
    initial = everything(first.checkpoint_path)
    assert torch.equal(a["student.ibot_head.mlp.0.weight"], initial["student.ibot_head.mlp.0.weight"])
    metadata = SafeFileSystemReader(str(resumed.checkpoint_path)).read_metadata()
    optimizer_keys = [k for k in metadata.state_dict_metadata if k.startswith("optimizer.state.")]
    assert any(".dino_head." in k for k in optimizer_keys)
    assert not any(".ibot_head." in k for k in optimizer_keys)
