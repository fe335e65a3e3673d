"""Sharded checkpoints: round trip, atomicity, pointer, pruning, consolidation, resharding 2 <-> 1 ranks."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import scale_launch
import torch
from scale_worker import build_objective, global_batch_slice, tiny_config

from dinolite.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    load_consolidated_state_dict,
    read_checkpoint_info,
    resolve_checkpoint_dir,
    restore_rng_state,
)
from dinolite.models import build_backbone, build_heads


class Counters:
    """A Stateful with tensor and JSON leaves (like the loop's progress and the watchdog)."""

    def __init__(self):
        self.seen = torch.zeros(3)
        self.patience = [0, 0]
        self.name = "x"

    def state_dict(self):
        return {"seen": self.seen.clone(), "nested": {"patience": list(self.patience), "name": self.name}}

    def load_state_dict(self, state):
        self.seen = state["seen"].clone()
        self.patience = list(state["nested"]["patience"])
        self.name = state["nested"]["name"]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_config(separate_head=False, koleo=0.1)
    objective = build_objective(cfg)
    objective.train()
    optimizer = torch.optim.AdamW(objective.student.parameters(), lr=1e-3)
    return cfg, objective, optimizer


def _train(objective, optimizer, steps: int, start: int = 0) -> list[float]:
    losses = []
    for it in range(start, start + steps):
        optimizer.zero_grad(set_to_none=True)
        out = objective.loss_at_temperature(global_batch_slice(it, 4, 0, 1), teacher_temp=0.05)
        out.loss.backward()
        optimizer.step()
        objective.update_teacher(0.9)
        losses.append(float(out.loss.detach()))
    return losses


def test_round_trip_restores_everything_and_training_continues_bitwise(tmp_path):
    cfg, objective, optimizer = _setup()
    _train(objective, optimizer, 2)
    counters = Counters()
    counters.seen += 5
    counters.patience = [2, 1]
    manager = CheckpointManager(tmp_path, keep_last=2, config=cfg)
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    path = manager.save(2, {"model": objective, "optimizer": optimizer, "counters": counters}, batches_consumed=7)
    saved_extra = objective.extra_state()
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    expected = _train(objective, optimizer, 2, start=2)

    _, fresh, fresh_opt = _setup(seed=99)  # different init: everything must come from the checkpoint
    fresh_counters = Counters()
    info = manager.load(manager.latest(), {"model": fresh, "optimizer": fresh_opt, "counters": fresh_counters})
    assert (info["iteration"], info["batches_consumed"], info["world_size"]) == (2, 7, 1)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws  # RNG streams restored
    assert torch.equal(fresh_counters.seen, torch.full((3,), 5.0)) and fresh_counters.patience == [2, 1]
    for key, value in saved_extra.items():  # centering buffers
        assert torch.equal(fresh.extra_state()[key], value), key
    assert _train(fresh, fresh_opt, 2, start=2) == expected  # moments, step counts, centers all restored
    for (name, a), b in zip(objective.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert path == tmp_path / "checkpoints" / "iter_00000002"
    assert (path / "config.yaml").is_file() and "embed_dim: 32" in (path / "config.yaml").read_text()


def test_layout_pointer_pruning_and_atomicity(tmp_path):
    _, objective, optimizer = _setup()
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)  # the folder itself is accepted too
    state = {"model": objective, "optimizer": optimizer}
    assert manager.latest() is None
    for iteration in (10, 20, 30):
        manager.save(iteration, state)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_00000020", "iter_00000030", "latest"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter_00000030"
    # a save killed half-way leaves a .tmp directory: never picked up, removed by the next save of it
    broken = tmp_path / "checkpoints" / "iter_00000040.tmp"
    broken.mkdir()
    (broken / "junk").write_text("partial")
    assert manager.latest().name == "iter_00000030"
    manager.save(40, state)
    assert not broken.exists() and manager.latest().name == "iter_00000040"
    # a stale pointer falls back to the newest complete directory
    (tmp_path / "checkpoints" / "latest").write_text("iter_00000999\n")
    assert manager.latest().name == "iter_00000040"
    # saving the same iteration again replaces it
    assert manager.save(40, state).name == "iter_00000040"
    # every DCP entry is a tensor: no pickled param groups
    meta = torch.distributed.checkpoint.FileSystemReader(str(manager.latest())).read_metadata()
    assert not [k for k, v in meta.state_dict_metadata.items() if type(v).__name__ == "BytesStorageMetadata"]
    assert any(
        k.startswith("optimizer.state.student.backbone.") and k.endswith("exp_avg") for k in meta.state_dict_metadata
    )


def test_rng_state_round_trip_is_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    draws = (random.gauss(0, 1), np.random.randn(), torch.randn(2))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    a, b, c = random.gauss(0, 1), np.random.randn(), torch.randn(2)
    assert a == draws[0] and b == draws[1] and torch.equal(c, draws[2])


def test_errors_name_the_path(tmp_path):
    _, objective, optimizer = _setup()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint_dir(tmp_path)
    manager = CheckpointManager(tmp_path, keep_last=1)
    path = manager.save(1, {"model": objective, "optimizer": optimizer})
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json: invalid JSON"):
        read_checkpoint_info(path)
    (path / "state.json").write_text(json.dumps({"iteration": 1, "batches_consumed": 1, "world_size": 1}))
    # a model with another architecture: the missing entries are named
    other_cfg = tiny_config(separate_head=True, koleo=0.1)
    other = build_objective(other_cfg)
    with pytest.raises(CheckpointError, match="ibot_head"):
        manager.load(path, {"model": other, "optimizer": torch.optim.AdamW(other.student.parameters())})
    with pytest.raises(CheckpointError, match="only tensors and JSON"):
        manager.save(
            2,
            {
                "model": objective,
                "bad": type("S", (), {"state_dict": lambda s: {"x": object()}, "load_state_dict": lambda s, d: None})(),
            },
        )


def test_consolidated_state_dict_has_dinov2_keys(tmp_path):
    cfg, objective, optimizer = _setup()
    _train(objective, optimizer, 1)
    CheckpointManager(tmp_path, keep_last=1, config=cfg).save(1, {"model": objective, "optimizer": optimizer})
    backbone = load_consolidated_state_dict(tmp_path)  # a run directory resolves to its latest checkpoint
    expected = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size).state_dict()
    assert set(backbone) == set(expected)
    assert "blocks.0.attn.qkv.weight" in backbone and "cls_token" in backbone
    for key, value in objective.teacher["backbone"].state_dict().items():
        assert torch.equal(backbone[key], value), key
    head = load_consolidated_state_dict(tmp_path, model="teacher", part="dino_head")
    assert set(head) == set(build_heads(cfg.dino, cfg.ibot, 32)["dino_head"].state_dict())
    extra = load_consolidated_state_dict(tmp_path, model="objective", part="extra")
    assert set(extra) == set(objective.extra_state())
    student = load_consolidated_state_dict(tmp_path / "checkpoints", model="student")
    assert torch.equal(student["pos_embed"], objective.student["backbone"].pos_embed.detach())
    with pytest.raises(CheckpointError, match="models in this checkpoint: .*student, teacher"):
        load_consolidated_state_dict(tmp_path, model="ema")


# ------------------------------------------------------------------------------------ 2 ranks <-> 1


def _copy_checkpoints(src, dst):
    shutil.copytree(src / "checkpoints", dst / "checkpoints")


@pytest.mark.slow
def test_saved_on_two_ranks_resumes_on_one_and_two(tmp_path):
    """Uninterrupted 2-rank run of 3 steps vs (2 steps, checkpoint) -> resume on 1 rank / on 2 ranks."""
    reference = scale_launch.run(2, ["--out", str(tmp_path / "ref"), "--steps", "3"])
    scale_launch.run(2, ["--out", str(tmp_path / "save"), "--steps", "2", "--checkpoint-every", "2"])
    sharded_teacher = load_consolidated_state_dict(tmp_path / "save")  # consolidation of a 2-rank checkpoint
    assert read_checkpoint_info(resolve_checkpoint_dir(tmp_path / "save"))["world_size"] == 2
    for target in ("one", "two"):
        _copy_checkpoints(tmp_path / "save", tmp_path / target)
    on_one = scale_launch.run(1, ["--out", str(tmp_path / "one"), "--steps", "3", "--resume"])
    on_two = scale_launch.run(2, ["--out", str(tmp_path / "two"), "--steps", "3", "--resume"])
    assert int(on_one["start"]) == int(on_two["start"]) == 2
    assert on_two["losses"][0] == reference["losses"][2]  # same world size: bitwise
    torch.testing.assert_close(on_one["losses"][0], reference["losses"][2], rtol=1e-6, atol=1e-6)
    for key in reference["teacher"]:
        assert torch.equal(on_two["teacher"][key], reference["teacher"][key]), key
        torch.testing.assert_close(on_one["teacher"][key], reference["teacher"][key], rtol=1e-5, atol=1e-6)
    assert set(sharded_teacher) == {k[len("backbone.") :] for k in reference["teacher"] if k.startswith("backbone.")}


@pytest.mark.slow
def test_saved_on_one_rank_resumes_on_two(tmp_path):
    reference = scale_launch.run(1, ["--out", str(tmp_path / "ref"), "--steps", "3"])
    scale_launch.run(1, ["--out", str(tmp_path / "save"), "--steps", "2", "--checkpoint-every", "2"])
    _copy_checkpoints(tmp_path / "save", tmp_path / "two")
    on_two = scale_launch.run(2, ["--out", str(tmp_path / "two"), "--steps", "3", "--resume"])
    assert int(on_two["start"]) == 2
    torch.testing.assert_close(on_two["losses"][0], reference["losses"][2], rtol=1e-6, atol=1e-6)
    for key in reference["teacher"]:
        torch.testing.assert_close(on_two["teacher"][key], reference["teacher"][key], rtol=1e-5, atol=1e-6)
