"""The first thing to run on a machine with one GPU: CUDA correctness smoke, the ViT-S/B/L throughput
ladder with peak memory, and the rows for ``benchmarks/RESULTS.md``, in at most 10 minutes.

Stages (each in its own time box; one that fails or runs out of time is reported and the others run):

1. correctness smoke (``first_contact_checks.py``): one DINOv2 training step in bf16 autocast against the
   fp32 step; xformers against SDPA attention (CUDA, when xformers is installed); ``torch.compile`` of the
   blocks against eager in fp32 (CUDA: the trainer compiles on CUDA only);
2. throughput ladder: ViT-S/16, ViT-B/16, ViT-L/16 at 224 px with 2 global + 8 local (96 px) crops, compile
   off and on, through ``train_throughput.run_benchmark`` (the trainer's ``Run``): images/s, step time,
   achieved TFLOP/s, MFU against the matmul roofline measured in the process and the datasheet peak;
3. peak memory per rung: ``torch.cuda.max_memory_allocated`` over the timed steps (process peak RSS on CPU);
4. the planner (``dinolite-plan``'s fake step, one process) against that peak, per compile-off rung: within
   ``PLANNER_TOLERANCE`` or failed (on CPU the RSS is no allocator peak, so the plan is only printed).

The batch sizes are fixed (ViT-S and ViT-B 64, ViT-L 32 per GPU: well inside 80 GB), so the same command
runs unchanged on an 80 GB and a 141 GB card. The report (markdown, machine and command included) is
rewritten after every stage, so an interrupted run still leaves what it measured.

``--device cpu --quick`` runs every stage's code at toy sizes (shallow models, small crops, few steps); the
CUDA-only checks then report ``skipped: no CUDA``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import train_throughput  # noqa: E402
from benchmarks.first_contact_checks import (  # noqa: E402
    StageResult,
    bf16_check,
    compile_check,
    run_stage,
    xformers_check,
)
from benchmarks.first_contact_report import format_markdown, machine_summary  # noqa: E402
from dinolite.io import write_text_atomic  # noqa: E402

QUICK_BATCH = 4
LADDER = (("vits16", 64), ("vitb16", 64), ("vitl16", 32))  # (preset, images per GPU)
SMOKE_CONFIG = "vits16"
# Seconds per unit on CUDA: the smoke checks build two Runs each (compile: two compilations of ViT-S);
# a compile rung compiles student and teacher blocks for both crop sizes before its timed steps.
BOXES = {"bf16": 60.0, "xformers": 45.0, "compile": 120.0, "rung": 60.0, "rung_compile": 120.0, "planner": 45.0}
QUICK_BOX = 60.0  # every unit on CPU --quick (seconds each, toy sizes)
# Toy sizes for --quick: every code path, seconds on a CPU. Patch 16 needs crops of 16 px multiples.
QUICK_OVERRIDES = (
    "student.depth=1",
    "crops.global_crops_size=48",  # iBOT block masks need >= 8 patches
    "crops.local_crops_size=16",
    "dino.head_n_prototypes=64",
    "dino.head_hidden_dim=64",
    "dino.head_bottleneck_dim=32",
    "ibot.head_n_prototypes=64",
    "ibot.head_hidden_dim=64",
    "ibot.head_bottleneck_dim=32",
    f"train.batch_size_per_gpu={QUICK_BATCH}",
)
PLANNER_TOLERANCE = 0.10  # planned vs CUDA peak: the allocator's 512-byte rounding, cuBLAS / cuDNN workspaces
# and CUDA-only kernels' buffers are not in the plan (on this repository's CPU check the gap is under 2%)
PACKING_PENDING = "pending: crop packing (issue 29 item 4) does not exist yet, so the ladder runs without it"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_first_contact.py",
        description="CUDA correctness smoke + ViT-S/B/L throughput ladder + peak memory, as RESULTS.md rows.",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="toy sizes and 1-2 steps (the CPU smoke test)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for all stages together")
    parser.add_argument("--iterations", type=int, help="timed steps per rung (default 10; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps per rung (default 3; 1 with --quick)")
    parser.add_argument("--output", type=Path, default=Path("gpu_first_contact.md"), help="markdown report")
    parser.add_argument("--command", help="the command to record (the shell wrapper passes its own)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.iterations = args.iterations or (1 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if args.budget_s <= 0 or args.iterations <= 0 or args.warmup < 0:
        parser.error("--budget-s and --iterations must be > 0, --warmup >= 0")
    return args


class Budget:
    """The time left for all stages: each unit gets its own box, cut to what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def box(self, seconds: float) -> float:
        return min(seconds, self.deadline - time.monotonic())


def smoke_stages(args: argparse.Namespace, budget: Budget, report: Callable[[StageResult], None]) -> None:
    device = torch.device(args.device)
    common = [f"train.device={args.device}", *(QUICK_OVERRIDES if args.quick else ("train.batch_size_per_gpu=16",))]
    checks = (
        ("bf16", "bf16 step vs fp32 step", lambda: bf16_check(SMOKE_CONFIG, common)),
        ("xformers", "xformers vs SDPA attention", lambda: xformers_check(SMOKE_CONFIG, common, device)),
        ("compile", "torch.compile vs eager", lambda: compile_check(SMOKE_CONFIG, common, device)),
    )
    for key, name, body in checks:
        report(unit(name, QUICK_BOX if args.quick else BOXES[key], budget, body))


def unit(name: str, seconds: float, budget: Budget, body: Callable[[], StageResult]) -> StageResult:
    box = budget.box(seconds)
    if box <= 0:
        return StageResult(name, "skipped", "skipped: the time budget (--budget-s) is spent")
    return run_stage(name, box, body)


def rung_argv(args: argparse.Namespace, preset: str, batch: int, compiled: bool) -> list[str]:
    """``train_throughput.py`` arguments of one rung (bf16 autocast on CUDA, as DINOv2 trains)."""
    argv = ["--config", preset, "--device", args.device, "--batch-size", str(QUICK_BATCH if args.quick else batch)]
    argv += ["--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    argv += ["--precision", "bf16" if args.device == "cuda" else "fp32", "--distinct-batches", "2"]
    if compiled:
        argv.append("--compile")
    if args.quick:
        argv += ["--matmul-size", "256", "--threads", "1"]
    # the config overrides (positional) come last
    argv += ["crops.global_crops_size=224", "crops.local_crops_size=96", "crops.local_crops_number=8"]
    if args.quick:  # later overrides win
        argv += [o for o in QUICK_OVERRIDES if not o.startswith("train.batch_size_per_gpu")]
    return argv


def rung(args: argparse.Namespace, preset: str, batch: int, compiled: bool) -> StageResult:
    name = f"{preset} compile {'on' if compiled else 'off'}"
    if compiled:
        torch._dynamo.reset()  # a fresh cache: the previous rung's graphs must not count against this one's
    result = train_throughput.run_benchmark(train_throughput.parse_args(rung_argv(args, preset, batch, compiled)))
    setup, r = result["setup"], result["results"]
    row = {
        "model": f"{setup['arch']} depth {setup['depth']}/{setup['preset_depth']}",
        "crops": f"2x{setup['global_crops_size']} + {setup['local_crops_number']}x{setup['local_crops_size']}",
        "batch": setup["batch_size_per_device"],
        "precision": setup["precision"],
        "compile_requested": compiled,
        "compile_applied": bool(setup["sharding"] and setup["sharding"]["compile"]),
        **{k: r[k] for k in ("images_per_s_per_device", "step_time_s_median", "achieved_tflops_per_device")},
        **{k: r[k] for k in ("mfu_vs_matmul_roofline", "mfu_vs_datasheet", "peak_memory_gib", "peak_memory_kind")},
        "roofline_tflops": r["matmul_roofline"]["median_tflops"],
        "losses_finite": r["losses_finite"],
    }
    status = "ok" if r["losses_finite"] else "failed"
    detail = "" if r["losses_finite"] else f"non-finite loss in {r['losses']}"
    if compiled and not row["compile_applied"]:
        detail = "ran eager: " + "; ".join(setup["sharding"]["notes"] if setup["sharding"] else [])
    return StageResult(name, status, detail, data=row)


def ladder_stage(args: argparse.Namespace, budget: Budget, report: Callable[[StageResult], None]) -> None:
    for preset, batch in LADDER:
        for compiled in (False, True):
            seconds = QUICK_BOX if args.quick else BOXES["rung_compile" if compiled else "rung"]
            name = f"{preset} compile {'on' if compiled else 'off'}"
            report(unit(name, seconds, budget, functools.partial(rung, args, preset, batch, compiled)))


def planner_check(args: argparse.Namespace, preset: str, batch: int, measured: StageResult | None) -> StageResult:
    """The planner's predicted peak for the rung's step (same config, one process) against its measurement."""
    from dinolite.config import load_config
    from dinolite.plan.fake_step import measure_step
    from dinolite.plan.report import planned_config, synthetic_batch

    name = f"planner vs measured: {preset}"
    if measured is None or measured.status != "ok":
        return StageResult(name, "skipped", "skipped: its compile-off rung has no measurement")
    bench = train_throughput.parse_args(rung_argv(args, preset, batch, compiled=False))
    cfg = load_config(bench.config)
    overrides = train_throughput.benchmark_overrides(bench, train_throughput.preset_depth(cfg))
    cfg, _ = planned_config(load_config(bench.config, overrides))
    predicted = measure_step(cfg, 1, 1, synthetic_batch(cfg)).peak_bytes / 2**30
    peak, kind = measured.data["peak_memory_gib"], measured.data["peak_memory_kind"]
    if not kind.startswith("cuda"):
        return StageResult(name, "ok", f"planned {predicted:.3f} GiB; measured is {kind}: not comparable")
    diff = predicted / peak - 1
    status = "ok" if abs(diff) <= PLANNER_TOLERANCE else "failed"
    detail = f"planned {predicted:.2f} GiB, measured {peak:.2f} GiB ({kind}): {diff:+.1%}"
    return StageResult(name, status, detail, data={"planned_gib": predicted, "measured_gib": peak, "diff": diff})


def planner_stage(
    args: argparse.Namespace, budget: Budget, ladder: Sequence[StageResult], report: Callable[[StageResult], None]
) -> None:
    for preset, batch in LADDER:
        measured = next((r for r in ladder if r.name == f"{preset} compile off"), None)
        body = functools.partial(planner_check, args, preset, batch, measured)
        report(unit(f"planner vs measured: {preset}", QUICK_BOX if args.quick else BOXES["planner"], budget, body))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = args.command or " ".join(["python", "benchmarks/gpu_first_contact.py", *(argv or sys.argv[1:])])
    machine = machine_summary(torch.device(args.device))
    smoke: list[StageResult] = []
    ladder: list[StageResult] = []
    notes = [PACKING_PENDING]
    if args.quick:
        notes.append("--quick: toy sizes (depth 1, 48/16 px crops, small heads, 1 timed step): no figures to record")

    def write(final: bool = False) -> str:
        text = format_markdown(machine, command, smoke, ladder, notes, finished=final)
        write_text_atomic(args.output, text)
        return text

    def add(target: list[StageResult]) -> Callable[[StageResult], None]:
        def report(result: StageResult) -> None:
            target.append(result)
            print(f"[{result.seconds:6.1f} s] {result.name}: {result.status} {result.detail}", flush=True)
            write()

        return report

    budget = Budget(args.budget_s)
    interrupted = False
    try:
        smoke_stages(args, budget, add(smoke))
        ladder_stage(args, budget, add(ladder))
        planner_stage(args, budget, ladder, add(smoke))
    except KeyboardInterrupt:  # the shell wrapper's timeout sends SIGINT: keep what was measured
        interrupted = True
        notes.append("interrupted (the wrapper's time limit or Ctrl-C): the stages listed are those that finished")
    text = write(final=True)
    print(text)
    print(f"wrote {args.output}")
    failed = [r for r in (*smoke, *ladder) if r.status in ("failed", "timed out")]
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
