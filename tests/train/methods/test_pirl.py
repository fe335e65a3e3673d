"""PIRL as a method (dinolite/train/methods/pirl.py): the objective is Eq. 5 on its heads' outputs with the
bank's slots and negatives, the bank moves after the scores, the jigsaw head reads the tiles in their order,
the config refuses tiles the ViT cannot encode, and 2 processes with the bank equal 1 process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dinolite.config import ConfigError, load_config
from dinolite.losses import PIRLLoss
from dinolite.train.methods import get_method
from dinolite.train.methods.pirl import PIRLObjective
from tests.gloo_ranks import run_on_ranks

TINY = [
    "student.embed_dim=32",
    "student.depth=1",
    "student.num_heads=2",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "pirl.jigsaw_crop_size=15",
    "pirl.tile_size=4",
    "pirl.head_hidden_dim=16",
    "pirl.out_dim=8",
    "pirl.memory_bank_size=32",
    "pirl.num_negatives=8",
    "train.batch_size_per_gpu=4",
]


def tiny_objective(*extra: str) -> PIRLObjective:
    torch.manual_seed(0)
    return get_method("pirl").build_objective(load_config("demo_pirl", [*TINY, *extra]))


def global_batch(step: int, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "collated_images": torch.randn(n, 3, 16, 16, generator=g),
        "collated_tiles": torch.randn(n, 9, 3, 4, 4, generator=g),
        "image_ids": torch.tensor([1000 + (step * 3 + i) % 10 for i in range(n)]),  # images come back
    }


def test_loss_is_eq5_on_the_heads_with_the_banks_slots_then_the_bank_moves():
    objective = tiny_objective()
    batch = global_batch(0)
    memory_before = objective.bank.memory.clone()
    out = objective(batch, iteration=3)
    s = objective.student
    with torch.no_grad():
        feats = s["backbone"].forward_features_list(
            [batch["collated_images"], batch["collated_tiles"].flatten(0, 1)], [None, None]
        )
        f = s["image_head"](feats[0]["x_norm_clstoken"])
        g = s["jigsaw_head"](feats[1]["x_norm_clstoken"])
    slots = objective.bank.slots(batch["image_ids"])  # already claimed: the same slots again
    jigsaw_slots, image_slots = objective.bank.draw(slots, 3)
    want = PIRLLoss(0.07, 0.5)(g, f, memory_before, jigsaw_slots, image_slots)
    torch.testing.assert_close(out.loss, want["loss"])
    torch.testing.assert_close(out.terms["jigsaw_loss"], want["jigsaw_loss"])
    moved = F.normalize(0.5 * memory_before[slots] + 0.5 * F.normalize(f, dim=1), dim=1)
    torch.testing.assert_close(objective.bank.memory[slots], moved)
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(objective.bank.memory[untouched], memory_before[untouched])


def test_the_jigsaw_embedding_depends_on_the_tile_order():
    head = tiny_objective().student["jigsaw_head"]
    tiles = torch.randn(2 * 9, 32)
    permuted = tiles.view(2, 9, 32)[:, torch.randperm(9, generator=torch.Generator().manual_seed(1))].reshape(18, 32)
    assert head(tiles).shape == (2, 8)
    assert not torch.allclose(head(tiles), head(permuted))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("pirl.tile_size=6", r"pirl\.tile_size.*multiple of student\.patch_size"),
        ("pirl.jigsaw_crop_size=14", r"pirl\.jigsaw_crop_size"),
        ("crops.local_crops_number=2", r"crops\.local_crops_number"),
        ("pirl.jigsaw_weight=1.5", r"pirl\.jigsaw_weight"),
        ("pirl.memory_momentum=1.0", r"pirl\.memory_momentum"),
    ],
)
def test_config_errors_name_the_key(override: str, match: str):
    with pytest.raises(ConfigError, match=match):
        load_config("demo_pirl", [*TINY, override])


def _steps(rank: int, world: int) -> dict[str, torch.Tensor]:
    """3 SGD steps on this rank's half of a global batch of 4 (images repeat across steps); heads without
    BatchNorm (its global statistics are tested 2 = 1 in tests/models) so that the bank's part is exact."""
    objective = tiny_objective("pirl.head_batch_norm=false")
    # SGD: AdamW would blow the k-bias gradient (exactly 0, so rounding noise) up to a full step
    optimizer = torch.optim.SGD(objective.student.parameters(), lr=0.1)
    n = 4 // world
    losses = []
    for it in range(3):
        batch = {k: v[rank * n : (rank + 1) * n] for k, v in global_batch(it).items()}
        out = objective(batch, it)
        optimizer.zero_grad()
        out.loss.backward()
        loss = out.loss.detach().clone()
        if world > 1:
            for p in objective.student.parameters():
                if p.grad is None:  # a parameter the loss does not reach (the mask token)
                    continue
                dist.all_reduce(p.grad)
                p.grad /= world
            dist.all_reduce(loss)
            loss /= world
        optimizer.step()
        losses.append(loss)
    state = {k: v.detach() for k, v in objective.state_dict().items()}
    return {"losses": torch.stack(losses), **state}


def _rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    return _steps(rank, world)


def test_two_processes_with_the_bank_equal_one_process(tmp_path: Path):
    reference = _steps(0, 1)
    assert {"bank.memory", "bank.keys"} <= set(reference)
    for result in run_on_ranks(_rank, 2, tmp_path):
        for key, value in reference.items():
            torch.testing.assert_close(result[key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_vitb16_preset_carries_the_releases_pirl_values_and_counts_the_tiles():
    cfg = load_config("vitb16_pirl")
    c = cfg.pirl
    assert (c.temperature, c.jigsaw_weight, c.memory_momentum, c.num_negatives) == (0.1, 0.5, 0.5, 32000)
    assert (c.memory_bank_size, c.grid, c.jigsaw_crop_size, c.tile_size, c.out_dim) == (1281167, 3, 255, 64, 128)
    assert (c.head_hidden_dim, c.head_batch_norm) == (2048, False)
    assert cfg.train.batch_size_per_gpu * 32 == 1024 and cfg.crops.global_crops_scale == [0.08, 1.0]
    flops = get_method("pirl").training_flops(cfg)
    # 9 tiles of 4 x 4 patches cost less than the 14 x 14-patch view but are counted
    assert flops["flops_per_image"] > 3 * (flops["flops_global_crop"] + 9 * flops["flops_local_crop"])
