#!/usr/bin/env python
"""dinolite-plan's predictions against what this CPU measures for the same step (issue 29, item 2).

For each small configuration, one process:

* memory: the planner's predicted peak (fake tensors, :func:`dinolite.plan.fake_step.measure_step`) against
  the peak of the CPU allocator during the same real step, from torch's memory profiler
  (``torch.profiler`` with ``profile_memory=True``; the timeline of every allocation and free,
  ``torch.profiler._memory_profiler.MemoryProfileTimeline``), both after AdamW's state exists;
* FLOPs: the planner's count (torch's flop counter on the fake step) against the analytical count of
  ``dinolite/models/info.py`` (``MethodSpec.training_flops``, fvcore per-module costs and the DINOv2 formula).

The collectives are checked exactly against real 2- and 4-process gloo runs in tests/plan/test_fake_step.py.

    python benchmarks/plan_vs_measured.py            # the table for benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.config import load_config
from dinolite.distributed import DistributedEnv
from dinolite.plan.fake_step import measure_step, prime_optimizer
from dinolite.plan.report import planned_config, synthetic_batch
from dinolite.train.build import build_run
from dinolite.train.methods import get_method

CASES = {
    "demo b8": ("demo", ["train.batch_size_per_gpu=8"]),
    "demo b32": ("demo", ["train.batch_size_per_gpu=32"]),
    "vits16 112/48 b4": (
        "vits16",
        ["crops.global_crops_size=112", "crops.local_crops_size=48", "train.batch_size_per_gpu=4"],
    ),
}


def measured_peak(cfg, batch) -> int:
    """Peak bytes of the CPU allocator over one real step (the run built and AdamW primed before)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline  # private: the allocator's timeline

    run = build_run(cfg, DistributedEnv(), batches=lambda request: iter(()))
    run.start_at(cfg.optim.freeze_last_layer_epochs * run.epoch_length)
    prime_optimizer(run)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run.step(batch)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(row) for row in sizes)


def compare(name: str) -> dict[str, float]:
    preset, overrides = CASES[name]
    cfg, _ = planned_config(load_config(preset, overrides))
    batch = synthetic_batch(cfg)
    predicted = measure_step(cfg, 1, 1, batch)
    measured = measured_peak(cfg, batch)
    analytical = get_method(cfg.train.method).training_flops(cfg)["flops_per_batch"]
    return {
        "predicted_mib": predicted.peak_bytes / 2**20,
        "measured_mib": measured / 2**20,
        "memory_diff": predicted.peak_bytes / measured - 1,
        "counted_gflop": predicted.flops / 1e9,
        "analytical_gflop": analytical / 1e9,
        "flops_diff": predicted.flops / analytical - 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"# {platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, 1 thread")
    print("| case | predicted peak MiB | CPU allocator peak MiB | diff | counted GFLOP | info.py GFLOP | diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        r = compare(name)
        print(
            f"| {name} | {r['predicted_mib']:.1f} | {r['measured_mib']:.1f} | {r['memory_diff']:+.1%} | "
            f"{r['counted_gflop']:.1f} | {r['analytical_gflop']:.1f} | {r['flops_diff']:+.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
