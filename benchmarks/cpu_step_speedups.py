"""One DINOv2 training step on CPU, today's settings against each speed option, side by side (issue 29, items 4-5).

One :class:`~dinolite.train.run.Run` (the trainer's own build and :meth:`Run.step`) of ``--config`` (ViT-S/16 by
default) at ``--batch-size`` images with 2 global + ``crops.local_crops_number`` local crops, ``--threads``
intra-op threads, fp32. The options are switched in place on that one run, round-robin, so every variant
shares the machine's load:

* ``baseline``: today's dinolite (per-crop block forward, AdamW's per-tensor loop, eager);
* ``packing``: ``student.crop_packing`` (:mod:`dinolite.models.crop_packing`);
* ``foreach`` / ``fused``: ``optim.adamw_kernel`` (read by AdamW from its param groups at every step);
* ``compile``: ``distributed.compile`` (each block ``nn.Module.compile``-d; needs a C++ compiler on CPU);
* ``all``: packing + fused + compile;
* ``bf16``: ``train.compute_precision=bf16`` (CPU autocast): a change of numerics, reported beside the others.

Reported: median process CPU seconds of a step per variant (one thread: robust to the neighbours' load) and its speed-up over ``baseline`` (same rounds), the FLOPs of one
step with and without packing (``torch.utils.flop_counter``: packing must not change them), and optionally
(``--profile``) the top operators of one baseline step (``torch.profiler``). ``--ceiling`` bounds what any
fp32 change that leaves the matrix products as they are can gain: one profiled baseline step splits into matrix
products (``aten::mm``/``addmm``/``bmm``, their FLOPs counted by the profiler) and the rest, and a large square
GEMM measures the core's fp32 matrix rate (CPU seconds); the step takes at least ``product FLOPs / GEMM rate``,
so no such change can make it more than ``baseline / that`` faster.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_step_speedups.py --rounds 3
    python benchmarks/cpu_step_speedups.py --config demo --batch-size 8 --rounds 1 --variants baseline packing
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.device_peaks import machine_info  # noqa: E402
from benchmarks.train_throughput import synthetic_batches  # noqa: E402
from dinolite.config import load_config  # noqa: E402
from dinolite.distributed import init_distributed  # noqa: E402
from dinolite.fsdp.sharding import find_cpu_compiler  # noqa: E402
from dinolite.train.build import build_run  # noqa: E402
from dinolite.train.run import Run  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"packing": False, "kernel": "auto", "compile": False},
    # not the same numerics: bf16 autocast (train.compute_precision=bf16), the CPU's bf16 matrix units
    "bf16": {"packing": False, "kernel": "auto", "compile": False, "precision": torch.bfloat16},
    "packing": {"packing": True, "kernel": "auto", "compile": False},
    "foreach": {"packing": False, "kernel": "foreach", "compile": False},
    "fused": {"packing": False, "kernel": "fused", "compile": False},
    "compile": {"packing": False, "kernel": "auto", "compile": True},
    "all": {"packing": True, "kernel": "fused", "compile": True},
    # bf16 autocast with the fp32 changes that cost nothing: fused AdamW on the fp32 master weights, compiled blocks
    "bf16_all": {"packing": False, "kernel": "fused", "compile": True, "precision": torch.bfloat16},
}
KERNEL_FLAGS = {"auto": (None, None), "foreach": (True, None), "fused": (None, True)}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vits16", help="preset name in configs/ or a .yaml path")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant (round-robin)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="print the top operators of one baseline step")
    parser.add_argument("--ceiling", action="store_true", help="bound the fp32 speed-up (matrix products vs the rest)")
    parser.add_argument("--skip-flops", action="store_true", help="do not count the step's FLOPs (two more steps)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. crops.local_crops_number=8")
    return parser.parse_args(argv)


def _blocks(run: Run) -> list[torch.nn.Module]:
    return [b for net in (run.objective.student, run.objective.teacher) for b in net["backbone"].blocks]


def apply_variant(run: Run, variant: dict[str, Any], compiled: dict[int, Callable]) -> None:
    """Switch packing, the AdamW kernel, compiled blocks and the autocast dtype on the live run (no state changes)."""
    run.training_step.precision = variant.get("precision")
    for net in (run.objective.student, run.objective.teacher):
        net["backbone"].set_crop_packing(variant["packing"])
    foreach, fused = KERNEL_FLAGS[variant["kernel"]]
    for group in run.optimizer.param_groups:
        group["foreach"], group["fused"] = foreach, fused
    for block in _blocks(run):
        if variant["compile"] and id(block) not in compiled:
            block.compile()
            compiled[id(block)] = block._compiled_call_impl  # noqa: SLF001 (kept to switch back and forth)
        # nn.Module.__call__ runs _compiled_call_impl when set: None is the eager block
        block._compiled_call_impl = compiled.get(id(block)) if variant["compile"] else None  # noqa: SLF001


def timed_step(run: Run) -> float:
    """Process CPU seconds of one step: with one thread they hardly move with the neighbours' load, which
    wall seconds on a shared machine do (both are printed for the warm-up)."""
    batch = run.next_batch()
    start = time.process_time()
    float(run.step(batch).output.loss.detach())
    return time.process_time() - start


def step_flops(run: Run, packing: bool, batch: dict[str, Any]) -> int:
    """FLOPs of one training step (forward, backward, optimizer) on ``batch`` counted by
    ``torch.utils.flop_counter`` (the same batch for both counts: the iBOT head's FLOPs follow its masks)."""
    from torch.utils.flop_counter import FlopCounterMode

    apply_variant(run, {"packing": packing, "kernel": "auto", "compile": False}, {})
    counter = FlopCounterMode(display=False)
    with counter:
        run.step(batch)
    return counter.get_total_flops()


def profile_step(run: Run, rows: int = 15) -> str:
    apply_variant(run, VARIANTS["baseline"], {})
    batch = run.next_batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run.step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP per CPU second of a ``size``-cubed fp32 GEMM on this thread: the core's practical matrix rate."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.process_time()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.process_time() - start)


def product_flops(run: Run) -> float:
    """FLOPs of the matrix products (``MATRIX_PRODUCTS``, counted by the profiler) in one baseline step. Only
    FLOPs are taken from the profiler: its operator times are wall times, inflated by the neighbours' load."""
    apply_variant(run, VARIANTS["baseline"], {})
    batch = run.next_batch()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        run.step(batch)
    return float(sum(e.flops for e in prof.key_averages() if e.key in MATRIX_PRODUCTS))


def fp32_ceiling(step_seconds: float, flops: float) -> str:
    """The bound of ``--ceiling``: the step can take no less than its matrix products at the GEMM rate."""
    rate = gemm_rate()
    floor = flops / rate
    return (
        f"# fp32 ceiling: matrix products {flops / 1e9:.1f} GFLOP per step; a 2048^3 GEMM runs at {rate / 1e9:.1f} "
        f"GFLOP per CPU second, so the products alone take at least {floor:.2f} CPU s of the baseline's "
        f"{step_seconds:.2f} ({100 * floor / step_seconds:.0f} %): with everything else free, at most "
        f"{step_seconds / floor:.2f}x"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = ["train.device=cpu", "train.compute_precision=fp32", f"train.batch_size_per_gpu={args.batch_size}"]
    cfg = load_config(args.config, overrides + list(args.overrides))
    compiler = find_cpu_compiler()
    variants = [v for v in args.variants if compiler or not VARIANTS[v]["compile"]]
    print(
        f"# {machine_info(torch.device('cpu'), 1)} | threads {args.threads} | load average {os.getloadavg()} | C++ compiler {compiler}"
    )
    print(
        f"# config {args.config}: {cfg.student.arch}/{cfg.student.patch_size}, batch {args.batch_size}, 2 x "
        f"{cfg.crops.global_crops_size} + {cfg.crops.local_crops_number} x {cfg.crops.local_crops_size} crops"
    )
    if len(variants) < len(args.variants):
        print("# no C++ compiler on PATH: the compile variants are left out")
    env = init_distributed(cfg.distributed.backend, "cpu")
    batches = synthetic_batches(cfg, 2, torch.device("cpu"), seed=0)
    run = build_run(cfg, env, batches=lambda request: itertools.cycle(batches))
    compiled: dict[int, Callable] = {}
    if args.profile:
        print(profile_step(run))
    flops_in_products = product_flops(run) if args.ceiling else None
    if not args.skip_flops:
        flops = {packing: step_flops(run, packing, batches[0]) for packing in (False, True)}
        print(f"# step FLOPs (one batch): per crop {flops[False]} , packed {flops[True]}")
    for name in variants:  # warm-up (and compile) outside the timed rounds
        apply_variant(run, VARIANTS[name], compiled)
        start = time.perf_counter()
        cpu = timed_step(run)
        print(f"# warm-up {name}: {time.perf_counter() - start:.1f} s wall, {cpu:.1f} s CPU")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            apply_variant(run, VARIANTS[name], compiled)
            times[name].append(timed_step(run))
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    print("| variant | median CPU s/step | steps (CPU s) | speed-up vs baseline |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{base / median:.2f}x" if base else "-"
        print(f"| {name} | {median:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {ratio} |")
    if flops_in_products is not None and base:
        print(fp32_ceiling(base, flops_in_products))
    print(f"# load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
