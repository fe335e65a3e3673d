"""One rank of a small multi-process training run, spawned by the scale tests (tests/train/test_*.py).

Run with torchrun's variables in the environment (the tests set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) or none for a single process:

    python tests/train/scale_worker.py --out DIR --steps N [--strategy full_shard] [--checkpoint-every K]
        [--resume] [--batch-mode global|rng] [--separate-head] [--sleep S] [--precision fp32|bf16]
        [--size tiny|demo] [--gram]

It trains the real DINOv2 objective (``--size tiny``: a 2-block ViT on 16x16 crops; ``demo``: the demo
preset's 4-block, 96-wide ViT on 32x32 crops) with AdamW for ``--steps`` iterations
on synthetic batches and writes, on rank 0, ``DIR/result.pt``: the per-step losses (averaged over ranks)
and the full student/teacher state dicts. After each step every rank appends the step to
``DIR/progress_rank<R>.txt`` so a test can kill it at a chosen iteration.

Batches (``--batch-mode``):
* ``global``: image ``i`` of the global batch at iteration ``t`` is drawn from a generator seeded with
  ``(t, i)`` and rank ``r`` takes its slice, so any world size sees the same global batch (sharded vs
  single-process comparisons). KoLeo is off here: it is computed within each rank's batch by design.
* ``rng``: every rank draws its batch from the process-global python / numpy / torch RNGs, so an exact
  resume needs those streams restored from the checkpoint.

``--gram``: DINOv3's Gram anchoring on (per-image Gram matrices), the Gram teacher loaded before iteration 1
and refreshed after it; ``result.pt`` then also holds the Gram term per step, the refresh count and the Gram
teacher's state dict.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dinolite.checkpoint import CheckpointManager  # noqa: E402
from dinolite.config import load_config  # noqa: E402
from dinolite.distributed import all_reduce_sum, destroy_distributed, init_distributed  # noqa: E402
from dinolite.fsdp.clipping import clip_grad_norm_  # noqa: E402
from dinolite.fsdp.sharding import shard_objective  # noqa: E402
from dinolite.train.gram import attach_gram_anchoring  # noqa: E402
from dinolite.train.methods.dinov2 import build_objective  # noqa: E402
from dinolite.train.precision import autocast_context  # noqa: E402

PATCH = 4
N_LOCAL = 2
# --size: (global crop, local crop) sides in pixels; ``demo`` is the demo preset's model and crops
CROP_SIZES = {"tiny": (16, 8), "demo": (32, 16)}
GLOBAL_SIZE, LOCAL_SIZE = CROP_SIZES["tiny"]


def tiny_config(separate_head: bool, koleo: float, overrides: tuple[str, ...] = ()):
    return load_config(
        "demo",
        [
            "student.embed_dim=32",
            "student.depth=2",
            "student.num_heads=2",
            f"student.patch_size={PATCH}",
            "student.drop_path_rate=0.0",
            "dino.head_n_prototypes=32",
            "dino.head_bottleneck_dim=16",
            "dino.head_hidden_dim=32",
            "ibot.head_n_prototypes=32",
            "ibot.head_bottleneck_dim=16",
            "ibot.head_hidden_dim=32",
            f"ibot.separate_head={str(separate_head).lower()}",
            f"dino.koleo_loss_weight={koleo}",
            f"crops.global_crops_size={GLOBAL_SIZE}",
            f"crops.local_crops_size={LOCAL_SIZE}",
            f"crops.local_crops_number={N_LOCAL}",
            *overrides,
        ],
    )


def demo_config(separate_head: bool, koleo: float):
    """The demo preset's network and crops (4 blocks of width 96, 32 prototypes, 32/16 px crops)."""
    return load_config(
        "demo",
        [
            f"ibot.separate_head={str(separate_head).lower()}",
            f"dino.koleo_loss_weight={koleo}",
            f"crops.local_crops_number={N_LOCAL}",
        ],
    )


def _image(
    generator: torch.Generator, sizes: tuple[int, int] = CROP_SIZES["tiny"]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    global_size, local_size = sizes
    n_tokens = (global_size // PATCH) ** 2
    global_crops = torch.randn(2, 3, global_size, global_size, generator=generator)
    local_crops = torch.randn(N_LOCAL, 3, local_size, local_size, generator=generator)
    masks = torch.zeros(2, n_tokens, dtype=torch.bool)
    for crop in range(2):  # a quarter of the patches masked, as with 16 x 16 crops
        masks[crop, torch.randperm(n_tokens, generator=generator)[: n_tokens // 4]] = True
    return global_crops, local_crops, masks


def collate(images: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict:
    """Crop-major stacking as ``dinolite.data.collate_data_and_cast`` does (all crop 0s, then crop 1s)."""
    global_crops = torch.cat([torch.stack([img[0][c] for img in images]) for c in range(2)])
    local_crops = torch.cat([torch.stack([img[1][c] for img in images]) for c in range(N_LOCAL)])
    masks = torch.cat([torch.stack([img[2][c] for img in images]) for c in range(2)])
    flat = masks.flatten()
    weights = (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks).flatten()
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": masks,
        "mask_indices_list": flat.nonzero().flatten(),
        "masks_weight": weights[flat],
        "n_masked_patches": torch.tensor([int(flat.sum())]),
    }


def global_batch_slice(
    iteration: int, global_batch: int, rank: int, world: int, sizes: tuple[int, int] = CROP_SIZES["tiny"]
) -> dict:
    per_rank = global_batch // world
    indices = range(rank * per_rank, (rank + 1) * per_rank)
    return collate([_image(torch.Generator().manual_seed(iteration * 100_003 + i), sizes) for i in indices])


def rng_batch(batch_size: int) -> dict:
    """A batch drawn from the global RNGs (python picks a seed offset, numpy a scale, torch the pixels)."""
    offset = random.randrange(1_000_000)
    scale = float(np.random.uniform(0.5, 1.5))
    images = []
    for _ in range(batch_size):
        g, l, m = _image(torch.Generator().manual_seed(offset + int(torch.randint(0, 1_000_000, ()).item())))
        images.append((g * scale, l * scale, m))
    return collate(images)


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in module.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[name] = full.detach().clone().cpu()
    return out


def _record_forward_weight_dtype(objective: torch.nn.Module) -> set[str]:
    """The dtypes of the ``qkv`` weight the student's first block computes with, as seen when its attention
    runs (FSDP's mixed-precision policy casts the gathered weights to ``param_dtype`` before the block; the
    attention projects through ``Attention.project_qkv``, not through the ``qkv`` module's own forward)."""
    attention = objective.student["backbone"].blocks[0].attn
    seen: set[str] = set()
    attention.register_forward_pre_hook(lambda module, _: seen.add(str(module.qkv.weight.dtype)))
    return seen


def _mesh_shape(objective: torch.nn.Module) -> list[int]:
    """The device mesh of the student's first block's parameters (``[]``: not sharded)."""
    weight = next(objective.student["backbone"].blocks[0].parameters())
    mesh = getattr(weight, "device_mesh", None)
    return list(mesh.shape) if mesh is not None else []


def _attach_gram(objective: torch.nn.Module, cfg) -> torch.nn.Module:
    """Gram anchoring on ``objective``: loaded before iteration 1, refreshed after iteration 1 (2 % 2 == 0)."""
    cfg.gram.use_loss, cfg.gram.img_level = True, True
    cfg.gram.it_load_ema_teacher, cfg.gram.update_frequency, cfg.gram.it_first_update = 1, 2, 2
    attach_gram_anchoring(objective, cfg, "dinov2", offers_gram=True)
    return objective.gram


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--strategy", default="full_shard")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--batch-mode", choices=("global", "rng"), default="global")
    parser.add_argument("--separate-head", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--crop-packing", action="store_true", help="student.crop_packing (models/crop_packing.py)")
    parser.add_argument("--sleep", type=float, default=0.0, help="pause after each step (kill tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=tuple(CROP_SIZES), default="tiny")
    parser.add_argument("--gram", action="store_true", help="Gram anchoring (see the module docstring)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast + FSDP's bf16 policy"
    )
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = init_distributed(backend="gloo", device="cpu")
    torch.manual_seed(1234)  # same initial weights on every rank and every world size
    random.seed(args.seed + env.rank)
    np.random.seed(args.seed + env.rank)
    make_config = demo_config if args.size == "demo" else tiny_config
    cfg = make_config(args.separate_head, koleo=0.0 if args.batch_mode == "global" else 0.1)
    objective = build_objective(cfg)
    objective.student["backbone"].set_crop_packing(args.crop_packing)
    gram = _attach_gram(objective, cfg) if args.gram else None
    precision = torch.bfloat16 if args.precision == "bf16" else None
    shard_objective(objective, args.strategy, precision or False, args.activation_checkpointing, False)
    objective.train()
    forward_dtypes = _record_forward_weight_dtype(objective)
    optimizer = torch.optim.AdamW(objective.student.parameters(), lr=1e-3, weight_decay=0.04)
    manager = CheckpointManager(out, keep_last=2, config=cfg)
    app_state = {"model": objective, "optimizer": optimizer}
    start = 0
    if args.resume and manager.latest() is not None:
        start = manager.load(manager.latest(), app_state)["iteration"]
    torch.manual_seed(args.seed * 7919 + env.rank + 1) if start == 0 else None

    losses, gram_losses = [], []
    for iteration in range(start, args.steps):
        if args.batch_mode == "global":
            batch = global_batch_slice(iteration, args.global_batch, env.rank, env.world_size, CROP_SIZES[args.size])
        else:
            batch = rng_batch(args.global_batch // env.world_size)
        optimizer.zero_grad(set_to_none=True)
        if gram is not None:
            gram.before_step(iteration, objective.teacher)
        with autocast_context(precision, torch.device("cpu")):
            output = objective.loss_at_temperature(batch, teacher_temp=0.05)
            if gram is not None:
                output = gram.anchor(output, iteration)
                gram_losses.append(all_reduce_sum(float(output.terms["gram_loss"].detach()), "cpu") / env.world_size)
        output.loss.backward()
        clip_grad_norm_(objective.student.parameters(), 1.0)
        optimizer.step()
        objective.update_teacher(0.9)
        if gram is not None:
            gram.after_optimizer_step(iteration, objective.teacher)
        losses.append(all_reduce_sum(float(output.loss.detach()), "cpu") / env.world_size)
        done = iteration + 1
        if args.checkpoint_every and done % args.checkpoint_every == 0:
            manager.save(done, app_state)
        with open(out / f"progress_rank{env.rank}.txt", "a") as handle:
            handle.write(f"{done}\n")
        if args.sleep:
            time.sleep(args.sleep)

    result = {
        "losses": torch.tensor(losses, dtype=torch.float64),
        "start": torch.tensor(start),
        "student": full_state(objective.student),
        "teacher": full_state(objective.teacher),
        "forward_weight_dtypes": sorted(forward_dtypes),
        "mesh_shape": _mesh_shape(objective),
    }
    if gram is not None:
        result["gram_losses"] = torch.tensor(gram_losses, dtype=torch.float64)
        result["gram_refreshes"] = gram.refreshes.clone()
        result["gram_teacher"] = full_state(gram.teacher)
    if env.rank == 0:
        tmp = out / "result.pt.tmp"
        torch.save(result, tmp)
        os.replace(tmp, out / "result.pt")
    destroy_distributed(leave_together=True)


if __name__ == "__main__":
    main()
