"""SwAV as a registered method (dinolite/train/methods/swav.py): one projection-head call on every crop, the loss
on the prototypes' scores, unit prototypes and their freeze with the trainer's optimizer, the feature queue
(start, use, a bitwise kill-and-resume while it is in use, 2 processes = 1 process), the config rules and the
ViT-B/16 preset."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.config import ConfigError, load_config
from dinolite.losses import SwAVLoss
from dinolite.train.loop import train
from dinolite.train.methods import get_method, swav
from dinolite.train.optim import optimizer_for
from dinolite.train.run import RunHooks

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "methods"))
from test_every_method import StopAt, method_config, random_image_stream  # noqa: E402

SMALL = [
    "student.embed_dim=24",
    "student.depth=1",
    "student.num_heads=2",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "joint_embedding.projector_hidden_dim=16",
    "joint_embedding.projector_out_dim=8",
    "swav.num_prototypes=7",
    "train.batch_size_per_gpu=4",
    "train.iterations_per_epoch=10",
]


def _batch(n_images: int = 4, n_local: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "collated_global_crops": torch.randn(2 * n_images, 3, 16, 16, generator=g),
        "collated_local_crops": torch.randn(n_local * n_images, 3, 8, 8, generator=g),
    }


def _objective(*extra: str) -> swav.SwAVObjective:
    torch.manual_seed(0)
    return get_method("swav").build_objective(load_config("demo_swav", [*SMALL, *extra]))


def test_the_loss_is_swav_on_the_unit_projections_of_one_head_call_on_every_crop():
    objective = _objective("swav.queue_length=0")
    batch = _batch()
    out = objective(batch, iteration=0)
    backbone, projector = objective.student["backbone"], objective.student["projector"]
    cls = [
        o["x_norm_clstoken"]
        for o in backbone.forward_features_list(
            [batch["collated_global_crops"], batch["collated_local_crops"]], [None, None]
        )
    ]
    z = F.normalize(projector(torch.cat(cls)), dim=1)  # one call: BatchNorm statistics over all 4 crops
    scores = list(objective.student["prototypes"](z).split(4))
    torch.testing.assert_close(out.loss, SwAVLoss(0.1, 0.05, 3)(scores)["loss"])
    per_crop = F.normalize(torch.cat([projector(c) for c in torch.cat(cls).split(4)]), dim=1)
    assert not torch.allclose(per_crop, z)  # per-crop calls would be another head (the joint-embedding family's)
    assert set(out.terms) == {"swav_loss"}
    assert out.diagnostics["teacher_head_probs"].shape == (4, 7) and out.diagnostics["student_head_logits"].shape == (
        4,
        7,
    )


def test_prototypes_are_unit_rows_at_construction_and_after_each_step():
    objective = _objective()
    weight = objective.student["prototypes"].last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(7))
    with torch.no_grad():
        weight.mul_(3.0)
    objective.after_optimizer_step(0)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(7))


def test_the_trainers_optimizer_freezes_the_prototypes_for_freeze_prototypes_iters():
    cfg = load_config(
        "demo_swav", [*SMALL, "swav.freeze_prototypes_iters=1", "optim.weight_decay=0.1", "optim.weight_decay_end=0.1"]
    )
    torch.manual_seed(0)
    objective = get_method("swav").build_objective(cfg)
    optimizer = optimizer_for(objective.student, cfg.optim)
    flagged = [g for g in optimizer.param_groups if g.get("is_last_layer")]
    assert [p for g in flagged for p in g["params"]] == [objective.student["prototypes"].last_layer.weight]
    weight = objective.student["prototypes"].last_layer.weight
    for iteration in range(2):
        before = weight.detach().clone()
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = 0.01, 0.1
        optimizer.zero_grad()
        objective(_batch(seed=iteration), iteration).loss.backward()
        objective.after_backward(iteration, optimizer)
        optimizer.step()  # frozen: not one bit moves (the re-normalisation after it only rounds unit rows)
        assert torch.equal(weight, before) == (iteration == 0)
        objective.after_optimizer_step(iteration)


def test_the_queue_fills_from_its_epoch_and_changes_the_codes_once_full():
    # batch 4 per rank, 8 rows: filled from iteration 10 (epoch 1), full after iterations 10 and 11
    objective = _objective("swav.queue_length=8", "swav.epoch_queue_starts=1")
    plain = _objective("swav.queue_length=0")
    for iteration in (0, 9, 10, 11, 12):
        out, reference = objective(_batch(seed=iteration), iteration), plain(_batch(seed=iteration), iteration)
        used = iteration >= 12
        assert torch.allclose(out.loss, reference.loss) != used, iteration
    assert int(objective.queue.fills) == 3


def test_a_run_stopped_while_the_queue_is_in_use_resumes_bitwise(tmp_path):
    """6 iterations of 4 images, the queue (8 rows) filling from iteration 2 and used from iteration 4; stopped at
    iteration 4, resumed: every checkpoint tensor (the queue buffers included) equals the uninterrupted run's."""
    extra = ("swav.queue_length=8", "swav.epoch_queue_starts=1", "swav.freeze_prototypes_iters=2")
    straight = train(method_config("swav", tmp_path / "straight", *extra), batches=random_image_stream)
    train(method_config("swav", tmp_path / "resumed", *extra), batches=random_image_stream, hooks=RunHooks(StopAt(5)))
    resumed = train(method_config("swav", tmp_path / "resumed", *extra), batches=random_image_stream)
    a = load_consolidated_state_dict(straight.checkpoint_path, "objective", None)
    b = load_consolidated_state_dict(resumed.checkpoint_path, "objective", None)
    assert any("queue.rows" in k for k in a) and sorted(a) == sorted(b)
    queue = next(v for k, v in a.items() if k.endswith("queue.rows"))
    assert queue.abs().sum() > 0
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("swav.epsilon=0", "'swav.epsilon': 0.0; must be > 0"),
        ("swav.sinkhorn_iterations=0", "'swav.sinkhorn_iterations': 0; must be >= 1"),
        ("swav.queue_length=10", "'swav.queue_length': 10; must be 0 (no queue) or at least the global batch"),
        ("joint_embedding.predictor_layers=2", "train.method=swav has no predictor"),
        ("joint_embedding.target=ema", "'joint_embedding.target': 'ema'"),
    ],
)
def test_swav_rules_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo_swav", [override])
    assert message in str(info.value)


def test_the_vitb16_preset_takes_the_released_swav_values():
    cfg = load_config("vitb16_swav")
    c = cfg.swav
    assert (c.num_prototypes, c.temperature, c.epsilon, c.sinkhorn_iterations) == (3000, 0.1, 0.05, 3)
    assert (c.queue_length, c.epoch_queue_starts) == (3840, 15)
    je = cfg.joint_embedding
    assert (je.projector_layers, je.projector_hidden_dim, je.projector_out_dim) == (2, 2048, 128)
    assert (cfg.crops.local_crops_number, cfg.crops.global_crops_size, cfg.crops.local_crops_size) == (6, 224, 96)
    assert get_method("swav").head_names(cfg) == ("projector", "prototypes")
    flops = get_method("swav").training_flops(cfg)
    assert flops["flops_prototypes_per_image"] == 2 * 3 * 8 * 128 * 3000


# ---------------------------------------------------------------------------------------------- 2 processes


class FeaturesAsCLS(nn.Module):
    """A backbone whose CLS token is its input (the test feeds features, so ranks compute the same rows)."""

    embed_dim = 6

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x_norm_clstoken": x}

    def forward_features_list(self, xs: list[torch.Tensor], masks: list[Any]) -> list[dict[str, torch.Tensor]]:
        return [self.forward_features(x) for x in xs]


B, STEPS = 2, 4


def _steps(rank: int, world: int) -> dict[str, torch.Tensor]:
    """STEPS iterations of a global batch of 2 x B images (this rank's share), the queue (8 rows in all)
    filling from iteration 0 and used from iteration 2; parameter gradients averaged over ranks, plain SGD."""
    cfg = load_config(
        "demo_swav",
        [
            *SMALL,
            f"train.batch_size_per_gpu={2 * B // world}",
            "swav.queue_length=8",
            "swav.epoch_queue_starts=0",
            "swav.freeze_prototypes_iters=0",
        ],
    )
    torch.manual_seed(0)
    objective = get_method("swav").build_objective(cfg)
    objective.student["backbone"] = FeaturesAsCLS()
    objective.student["projector"] = swav.build_projector(cfg, FeaturesAsCLS.embed_dim)
    optimizer = torch.optim.SGD(objective.student.parameters(), lr=0.5)
    losses = []
    for it in range(STEPS):
        g = torch.Generator().manual_seed(it)
        crops = torch.randn(4, 2 * B, FeaturesAsCLS.embed_dim, generator=g)[:, rank * (2 * B // world) :][
            :, : 2 * B // world
        ]
        out = objective(
            {"collated_global_crops": torch.cat(list(crops[:2])), "collated_local_crops": torch.cat(list(crops[2:]))},
            it,
        )
        optimizer.zero_grad()
        out.loss.backward()
        for p in objective.student.parameters():
            if world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        objective.after_optimizer_step(it)
        loss = out.loss.detach().clone()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss)
    return {"losses": torch.stack(losses), **{k: v.detach() for k, v in objective.student.state_dict().items()}}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.save(_steps(rank, 2), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_with_the_queue_equal_one_process(tmp_path: Path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    reference = _steps(0, 1)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for key, value in reference.items():
            torch.testing.assert_close(result[key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
