"""The GPU code paths run on CPU: how far bf16 + FSDP2's mixed-precision policy lands from fp32 (issue 29).

Runs the DINOv2 demo-size network (tests/train/scale_worker.py ``--size demo``) on 2 gloo processes for
``--steps`` iterations, once in fp32 and once with bf16 autocast and FSDP2's ``MixedPrecisionPolicy``
(bf16 parameters, fp32 reduction), on the same global batches, and prints the per-step relative loss gap,
the relative L2 distance of the final student and teacher weights, and each run's wall time. The test
tests/fsdp/test_distributed_gpu_paths.py bounds these gaps; this script gives the figures the bound is
judged against.

``--compile-size tiny|demo`` measures ``distributed.compile`` on one process instead: the first step's
time with Inductor's caches off (the cold compile a fresh machine pays), the steady step time compiled
and eager, and how far 4 compiled steps land from 4 eager ones (losses, every tensor of the state).

    PYTHONPATH=. python benchmarks/gpu_paths_on_cpu.py [--steps 20] [--global-batch 16] [--output JSON]
    PYTHONPATH=. python benchmarks/gpu_paths_on_cpu.py --compile-size tiny [--steps 6] [--output JSON]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, str(ROOT))

from dinolite.config import load_config  # noqa: E402
from dinolite.distributed import DistributedEnv  # noqa: E402
from dinolite.train.build import build_run  # noqa: E402
from tests.train import scale_launch  # noqa: E402
from tests.train.test_loop import TINY, fake_stream  # noqa: E402

# the one-process network of tests/fsdp/test_distributed_gpu_paths.py, and the demo preset's
DEMO_NETWORK = [  # the demo preset's network and crops, a short schedule, 8 images
    "train.batch_size_per_gpu=8",
    "train.iterations_per_epoch=4",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "teacher.warmup_teacher_temp_epochs=1",
    "optim.freeze_last_layer_epochs=1",
    "data.num_workers=0",
    "train.device=cpu",
]
COMPILE_SIZES = {"tiny": TINY, "demo": DEMO_NETWORK}


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||b||`` over every floating-point tensor of two state dicts."""
    num = sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in b if b[k].is_floating_point())
    den = sum(float((b[k].double() ** 2).sum()) for k in b if b[k].is_floating_point())
    return (num / den) ** 0.5


def run_precision(precision: str, steps: int, global_batch: int, out: Path) -> tuple[dict, float]:
    args = ["--out", str(out), "--steps", str(steps), "--size", "demo", "--global-batch", str(global_batch)]
    start = time.perf_counter()
    result = scale_launch.run(2, [*args, "--precision", precision], timeout=1800)
    return result, time.perf_counter() - start


def bf16_gap(steps: int, global_batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fp32_s = run_precision("fp32", steps, global_batch, Path(tmp) / "fp32")
        bf16, bf16_s = run_precision("bf16", steps, global_batch, Path(tmp) / "bf16")
    relative = ((bf16["losses"] - fp32["losses"]).abs() / fp32["losses"].abs()).tolist()
    return {
        "steps": steps,
        "global_batch": global_batch,
        "fp32_losses": fp32["losses"].tolist(),
        "bf16_losses": bf16["losses"].tolist(),
        "loss_relative_gap_per_step": relative,
        "loss_relative_gap_max": max(relative),
        "student_relative_l2": relative_l2(bf16["student"], fp32["student"]),
        "teacher_relative_l2": relative_l2(bf16["teacher"], fp32["teacher"]),
        "bf16_forward_weight_dtypes": bf16["forward_weight_dtypes"],
        "wall_s": {"fp32": fp32_s, "bf16": bf16_s},
    }


def timed_steps(overrides: list[str], steps: int) -> tuple[list[float], list[float], dict[str, torch.Tensor]]:
    """Losses and wall seconds of ``steps`` steps of a one-process run, and its final state."""
    losses, seconds = [], []
    with build_run(load_config("demo", overrides), DistributedEnv(), batches=fake_stream) as run:
        for _ in range(steps):
            start = time.perf_counter()
            losses.append(float(run.step(run.next_batch()).output.loss.detach()))
            seconds.append(time.perf_counter() - start)
        state = {k: v.detach().clone() for k, v in run.objective.state_dict().items()}
    return losses, seconds, state


def compile_figures(size: str, steps: int) -> dict:
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True  # no on-disk kernel / graph cache: the cold start
    torch.set_num_threads(1)
    overrides = COMPILE_SIZES[size]
    eager_losses, eager_s, eager_state = timed_steps(overrides, steps)
    compiled_losses, compiled_s, compiled_state = timed_steps([*overrides, "distributed.compile=true"], steps)
    return {
        "size": size,
        "steps": steps,
        "first_step_s": {"eager": eager_s[0], "compiled (cold compile)": compiled_s[0]},
        "steady_step_s_median": {
            "eager": sorted(eager_s[1:])[len(eager_s[1:]) // 2],
            "compiled": sorted(compiled_s[1:])[len(compiled_s[1:]) // 2],
        },
        "loss_relative_gap_max": max(abs(c - e) / abs(e) for c, e in zip(compiled_losses, eager_losses)),
        "state_max_abs_gap": max(
            float((compiled_state[k] - v).abs().max()) for k, v in eager_state.items() if v.is_floating_point()
        ),
        "state_relative_l2": relative_l2(compiled_state, eager_state),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--compile-size", choices=tuple(COMPILE_SIZES), default=None)
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.compile_size:
        report = {"compile_cpu": compile_figures(args.compile_size, args.steps)}
    else:
        report = {"bf16_fsdp_gloo": bf16_gap(args.steps, args.global_batch)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
