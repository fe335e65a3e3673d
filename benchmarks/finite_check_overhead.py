"""What the post-step NaN/inf check costs next to the AdamW step it guards (issue 16, item 2).

Builds a preset's run as the trainer does (:func:`dinolite.train.build.build_run` on one CPU process: the
method's student, its parameter groups, AdamW), gives every student parameter a random gradient, then
times (median over ``--repeats`` after a warm-up):

* ``check``: :func:`dinolite.train.finite_check.check_finite_parameters` (one fused max-abs norm of the
  weights and one of the gradients per module, one host sync);
* ``adamw``: one ``optimizer.step()`` of the trainer's AdamW over the same parameters.

The ratio ``check / adamw`` is the figure to trust on a shared machine (both are memory-bound passes over
the same tensors, timed in the same process); the forward/backward of a real step costs far more than
either, so the check's share of a training iteration is smaller still.

Usage::

    python benchmarks/finite_check_overhead.py --config vitl16 --repeats 5 --output finite.json
    python benchmarks/finite_check_overhead.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.config import load_config  # noqa: E402
from dinolite.distributed import DistributedEnv  # noqa: E402
from dinolite.train.build import build_run  # noqa: E402
from dinolite.train.finite_check import check_finite_parameters  # noqa: E402
from dinolite.train.optim import apply_schedules  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocates AdamW moments on the first step)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config: str, overrides: list[str], repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    run = build_run(cfg, DistributedEnv())  # one CPU process; no batch is drawn
    student, optimizer, device = run.objective.student, run.optimizer, run.device
    for p in student.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    apply_schedules(optimizer, 1e-6, 0.04)
    modules = dict(run.objective.trainable_modules())
    check_s = _median_seconds(lambda: check_finite_parameters(modules, 0, device), repeats)
    adamw_s = _median_seconds(optimizer.step, repeats)
    return {
        "config": config,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in student.parameters()),
        "tensors": sum(1 for _ in student.parameters()),
        "check_ms": 1e3 * check_s,
        "adamw_step_ms": 1e3 * adamw_s,
        "check_over_adamw": check_s / adamw_s,
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vits16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the demo model, 2 repeats (smoke test)")
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    config, repeats = ("demo", 2) if args.quick else (args.config, args.repeats)
    result = measure(config, list(args.overrides), repeats, args.threads)
    print(
        f"{result['config']}: {result['parameters'] / 1e6:.1f} M parameters in {result['tensors']} tensors: "
        f"check {result['check_ms']:.2f} ms, AdamW step {result['adamw_step_ms']:.2f} ms, "
        f"check/step {100 * result['check_over_adamw']:.1f}%"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
