"""Training-step throughput, peak memory and MFU of a configured method (``train.method``, DINOv2 by default).

What is measured: full optimizer steps of the trainer's own :class:`~dinolite.train.run.Run` (built by
:func:`dinolite.train.build.build_run` as training builds it; :meth:`Run.step`: schedules applied, the
objective's forward under the trainer's autocast, NaN check, backward, the method's hooks (DINOv2:
prototype freeze, EMA teacher update), per-module gradient clipping, AdamW step), on synthetic batches
that are built before timing (random images through the method's own view transform and collate, so e.g.
iBOT masks are real block masks) and drawn outside the timed region. The data pipeline is therefore *not*
measured here (``benchmarks/data_throughput.py`` does that).

Reported per device (one process = one device):

* images/s = ``batch * timed steps / sum(step times)``; step time median and p90;
* peak memory: CUDA ``max_memory_allocated`` over the timed steps, or the process's peak RSS on CPU;
* model FLOPs per image from the method's ``MethodSpec.training_flops`` (nominal FLOPs = 2 x
  multiply-adds; DINOv2: student forward + backward on all crops, teacher forward on the global crops,
  heads included), for the depth that actually runs (``--depth`` shrinks the model and its FLOPs together);
* achieved TFLOP/s = FLOPs per image x images/s;
* MFU against (a) a datasheet peak (``--peak-tflops``, or a known H100/H200 figure) and (b) a matmul
  roofline measured in this process: a large square matmul ``C = A B`` in the compute dtype of the step
  (bf16 under bf16 autocast, else fp32), ``2 n^3`` FLOPs per product. (b) is the number to trust: it
  shares the clocks, thermal state, library versions and (on a shared CPU) the neighbours' load.
  Both references are measured / looked up in ``benchmarks/device_peaks.py``.

Under ``torchrun`` every rank runs the same steps with FSDP2 (the Run shards through
:func:`dinolite.fsdp.sharding.shard_objective`, the trainer's code path) and rank 0 writes the report.

Usage::

    python benchmarks/train_throughput.py --config demo --iterations 20 --output out.json
    python benchmarks/train_throughput.py --config vits16 --depth 2 --batch-size 4 --device cpu
    torchrun --nproc_per_node=8 benchmarks/train_throughput.py --config vitl16 --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.device_peaks import (  # noqa: E402
    datasheet_peak_tflops,
    machine_info,
    matmul_precision_key,
    matmul_roofline_tflops,
    synchronize,
)
from dinolite.config import Config, ConfigError, load_config  # noqa: E402
from dinolite.distributed import all_reduce_max, destroy_distributed, init_distributed  # noqa: E402
from dinolite.io import write_json_atomic  # noqa: E402
from dinolite.train.build import build_run  # noqa: E402
from dinolite.train.methods import get_method  # noqa: E402
from dinolite.train.run import Run  # noqa: E402
from dinolite.train.step import memory_gb  # noqa: E402

QUICK_DEFAULTS = {"iterations": 3, "warmup": 1, "batch_size": 4, "depth": 2, "matmul_size": 512, "distinct_batches": 2}
FULL_DEFAULTS = {
    "iterations": 20,
    "warmup": 3,
    "batch_size": None,
    "depth": None,
    "matmul_size": None,
    "distinct_batches": 4,
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/train_throughput.py",
        description="Images/s, step time, peak memory and MFU of full DINOv2 training steps on synthetic batches.",
    )
    parser.add_argument("--config", default="demo", help="preset name in configs/ or a .yaml path")
    parser.add_argument("--batch-size", type=int, help="images per device (default: train.batch_size_per_gpu)")
    parser.add_argument("--iterations", type=int, help="timed steps (default 20; 3 with --quick)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first, compilation included (default 3; 1 with --quick)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="as train.compute_precision: auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each block (Inductor: triton on CUDA, C++ on CPU)"
    )
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    parser.add_argument(
        "--sharding-strategy",
        choices=("full_shard", "shard_grad_op", "no_shard"),
        help="FSDP2 strategy under torchrun (default: distributed.sharding_strategy of the config)",
    )
    parser.add_argument("--depth", type=int, help="shallow stand-in: this many blocks (FLOPs counted for it)")
    parser.add_argument("--peak-tflops", type=float, help="datasheet peak of one device for the MFU (TFLOP/s)")
    parser.add_argument("--matmul-size", type=int, help="n of the n x n roofline matmul (default 8192 CUDA, 1024 CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads for CPU runs (default: torch's choice; 1 is faster on an oversubscribed host)",
    )
    parser.add_argument("--distinct-batches", type=int, help="pre-built batches cycled through (default 4)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke setting: 3 steps, batch 4, depth <= 2")
    parser.add_argument("--output", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. crops.local_crops_number=2")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("iterations", "batch_size", "depth", "matmul_size", "distinct_batches", "threads"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            parser.error(f"--{key.replace('_', '-')}={value}: must be > 0")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: must be >= 0")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops={args.peak_tflops}: must be > 0")
    return args


def benchmark_overrides(args: argparse.Namespace, preset_depth: int) -> list[str]:
    """Config overrides implied by the command line (the user's own ``key=value`` come last and win)."""
    overrides = [f"train.compute_precision={args.precision}", f"train.device={args.device}"]
    if args.batch_size is not None:
        overrides.append(f"train.batch_size_per_gpu={args.batch_size}")
    if args.depth is not None:
        # --quick caps the depth; an explicit --depth larger than the preset's is honoured as asked.
        depth = min(args.depth, preset_depth) if args.quick else args.depth
        overrides.append(f"student.depth={depth}")
    if args.compile:
        overrides.append("distributed.compile=true")
    if args.activation_checkpointing:
        overrides.append("distributed.activation_checkpointing=true")
    if args.sharding_strategy:
        overrides.append(f"distributed.sharding_strategy={args.sharding_strategy}")
    return overrides + list(args.overrides)


def preset_depth(cfg: Config) -> int:
    from dinolite.models.backbone_factory import backbone_kwargs

    return int(backbone_kwargs(cfg.student, cfg.crops.global_crops_size)["depth"])


def synthetic_batches(cfg: Config, count: int, device: torch.device, seed: int) -> list[dict[str, Any]]:
    """``count`` collated batches on ``device``: random uint8 images (one global crop size square)
    through the method's view transform and collate (e.g. iBOT's block masks)."""
    generator = torch.Generator().manual_seed(seed)
    method = get_method(cfg.train.method)
    transform, collate = method.build_transform(cfg), method.build_collate(cfg)
    size = cfg.crops.global_crops_size
    batches = []
    for _ in range(count):
        samples = [
            transform(
                torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator), generator=generator
            )
            for _ in range(cfg.train.batch_size_per_gpu)
        ]
        batch = collate(samples, generator=generator)
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return batches


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] (numpy's default method)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def timed_step(run: Run) -> tuple[float, float]:
    """Draw the next synthetic batch (untimed: seeds the step, as training does), then one timed
    :meth:`Run.step`; returns (loss, seconds). The loss read is the trainer's per-step host sync."""
    batch = run.next_batch()
    synchronize(run.device)
    start = time.perf_counter()
    loss = float(run.step(batch).output.loss.detach())
    synchronize(run.device)
    return loss, time.perf_counter() - start


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up, time; returns the report (every rank computes it; rank 0 writes it)."""
    base_cfg = load_config(args.config)
    full_depth = preset_depth(base_cfg)
    overrides = benchmark_overrides(args, full_depth)
    cfg = load_config(args.config, overrides)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = init_distributed(cfg.distributed.backend, cfg.train.device)
    device = torch.device(env.device)
    try:
        # The trainer's build; the batches are given, so data.source is never read (and no kNN runs here).
        run = build_run(cfg, env, batches=lambda request: itertools.cycle(batches))
        method, autocast_dtype, plan = run.method, run.precision, run.sharding
        # Seed per rank so that ranks see different images, as with a real sharded data stream.
        batches = synthetic_batches(cfg, args.distinct_batches, device, seed=cfg.train.seed * 1009 + env.rank)
        world_size, global_batch = env.world_size, run.global_batch

        matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 1024)
        roofline = matmul_roofline_tflops(device, autocast_dtype or torch.float32, matmul_size)

        # Steady state starts after DINO's prototype-layer freeze: that is where almost all steps of a run are.
        start_iteration = cfg.optim.freeze_last_layer_epochs * run.epoch_length
        run.start_at(start_iteration)
        losses = [timed_step(run)[0] for _ in range(args.warmup)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_times: list[float] = []
        for _ in range(args.iterations):
            loss, seconds = timed_step(run)
            losses.append(loss)
            step_times.append(seconds)

        flops = method.training_flops(cfg)
        batch_size = cfg.train.batch_size_per_gpu
        images_per_s = batch_size * len(step_times) / sum(step_times)
        achieved_tflops = flops["flops_per_image"] * images_per_s / 1e12
        precision_key = matmul_precision_key(autocast_dtype)
        peak, peak_source = datasheet_peak_tflops(device, precision_key, args.peak_tflops)
        median_step = statistics.median(step_times)
        memory: dict[str, Any] = {"peak_memory_gib": memory_gb(device)}
        if device.type == "cuda":
            memory["peak_memory_kind"] = "cuda max_memory_allocated (timed steps)"
            memory["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        else:
            memory["peak_memory_kind"] = "process peak RSS (ru_maxrss, whole run)"
        report = {
            "benchmark": "train_throughput",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(device, world_size),
            "setup": {
                "config": args.config,
                "overrides": overrides,
                "arch": cfg.student.arch,
                "depth": preset_depth(cfg),
                "preset_depth": full_depth,
                "patch_size": cfg.student.patch_size,
                "global_crops_size": cfg.crops.global_crops_size,
                "local_crops_size": cfg.crops.local_crops_size,
                "local_crops_number": cfg.crops.local_crops_number,
                "dino_prototypes": cfg.dino.head_n_prototypes,
                "batch_size_per_device": batch_size,
                "global_batch_size": global_batch,
                "precision": str(autocast_dtype or torch.float32).replace("torch.", ""),
                "sharding": None
                if plan is None
                else {
                    "strategy": plan.strategy,
                    "fsdp": plan.use_fsdp,
                    "fsdp_mixed_precision": plan.mixed_precision,
                    "activation_checkpointing": plan.activation_checkpointing,
                    "compile": plan.compile,
                    "notes": list(plan.notes),
                },
                "compile_requested": cfg.distributed.compile,
                "activation_checkpointing_requested": cfg.distributed.activation_checkpointing,
                "warmup_steps": args.warmup,
                "timed_steps": args.iterations,
                "distinct_batches": len(batches),
                "start_iteration": start_iteration,
            },
            "results": {
                "images_per_s_per_device": images_per_s,
                "images_per_s_total": images_per_s * world_size,
                "step_time_s_median": median_step,
                "step_time_s_p90": percentile(step_times, 90),
                "step_time_s_min": min(step_times),
                "step_time_s_max": max(step_times),
                "step_time_s_median_slowest_rank": all_reduce_max(median_step, device),
                **memory,
                "flops_per_image": flops["flops_per_image"],
                "flops_per_step_per_device": flops["flops_per_image"] * batch_size,
                # iBOT's masked patches (None for a method without masks)
                "masked_patches_per_global_crop_nominal": flops.get("masked_patches_per_global_crop"),
                "masked_patches_per_global_crop_measured": statistics.mean(
                    int(b["n_masked_patches"].item()) / (2 * batch_size) for b in batches
                )
                if "n_masked_patches" in batches[0]
                else None,
                "achieved_tflops_per_device": achieved_tflops,
                "matmul_roofline": roofline,
                "mfu_vs_matmul_roofline": achieved_tflops / roofline["median_tflops"],
                "datasheet_peak_tflops": peak,
                "datasheet_peak_source": peak_source,
                "mfu_vs_datasheet": None if peak is None else achieved_tflops / peak,
                "losses": losses,
                "losses_finite": all(math.isfinite(v) for v in losses),
            },
        }
        report["is_main"] = env.rank == 0
        destroy_distributed(leave_together=True)
        return report
    finally:
        destroy_distributed()  # after an error (a no-op once the ranks have left together)


def format_report(report: dict[str, Any]) -> str:
    s, r, m = report["setup"], report["results"], report["machine"]
    peak = r["datasheet_peak_tflops"]
    sharding = s["sharding"] or {"strategy": "none (1 process)", "compile": False, "activation_checkpointing": False}
    lines = [
        f"{s['config']}: {s['arch']} depth {s['depth']}/{s['preset_depth']}, patch {s['patch_size']}, "
        f"crops 2x{s['global_crops_size']} + {s['local_crops_number']}x{s['local_crops_size']}, "
        f"batch {s['batch_size_per_device']}/device x {m['world_size']}, {s['precision']}, "
        f"sharding {sharding['strategy']}, compile {sharding['compile']}, "
        f"act-ckpt {sharding['activation_checkpointing']}",
        f"device {m['device']} ({m['device_name']}), torch {m['torch']}, {m['torch_threads']} threads",
        f"  images/s          {r['images_per_s_per_device']:10.2f} per device, {r['images_per_s_total']:.2f} total",
        f"  step time         {r['step_time_s_median'] * 1e3:10.1f} ms median, {r['step_time_s_p90'] * 1e3:.1f} ms p90 "
        f"({s['timed_steps']} steps after {s['warmup_steps']} warm-up)",
        f"  peak memory       {r['peak_memory_gib']:10.2f} GiB ({r['peak_memory_kind']})",
        f"  FLOPs / image     {r['flops_per_image'] / 1e9:10.2f} GFLOP (model FLOPs, fwd+bwd student, fwd teacher)",
        f"  achieved          {r['achieved_tflops_per_device']:10.4f} TFLOP/s per device",
        f"  matmul roofline   {r['matmul_roofline']['median_tflops']:10.4f} TFLOP/s "
        f"({r['matmul_roofline']['dtype']} {r['matmul_roofline']['size']}^3, measured here)"
        f" -> MFU {100 * r['mfu_vs_matmul_roofline']:.1f}%",
        "  datasheet peak    "
        + (
            f"{peak:10.1f} TFLOP/s ({r['datasheet_peak_source']}) -> MFU {100 * r['mfu_vs_datasheet']:.1f}%"
            if peak is not None
            else f"{'n/a':>10} ({r['datasheet_peak_source']})"
        ),
    ]
    if sharding.get("notes"):
        lines.append("  notes: " + "; ".join(sharding["notes"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        report = run_benchmark(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.pop("is_main"):
        print(format_report(report))
        if args.output is not None:
            write_json_atomic(args.output, report)
            print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
