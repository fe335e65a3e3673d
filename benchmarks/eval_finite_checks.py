"""What the evaluations' NaN/inf checks cost next to the work they guard (issue 24).

Builds the backbone of a preset (random weights), then times (median over ``--repeats`` after a warm-up),
in one process:

* ``weights``: :func:`dinolite.eval.finite.check_finite_module` over every parameter and buffer, which
  ``load_any_backbone`` runs once per evaluation;
* ``features``: :func:`dinolite.eval.finite.check_finite_rows` on one batch of CLS features, which the
  CLIs run on every extracted set (one batch's share is shown);
* ``forward``: one forward pass of the backbone on ``--batch-size`` images at the preset's crop size,
  the unit of an evaluation's work (thousands of them per run).

The ratios to ``forward`` are the figures to trust on a shared machine.

Usage::

    python benchmarks/eval_finite_checks.py --config vitb16 --batch-size 8 --repeats 3 --output eval.json
    python benchmarks/eval_finite_checks.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.config import load_config  # noqa: E402
from dinolite.eval.finite import check_finite_module, check_finite_rows  # noqa: E402
from dinolite.models import build_backbone  # noqa: E402


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure(config: str, batch_size: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(config)
    size = cfg.crops.global_crops_size
    backbone = build_backbone(cfg.student, img_size=size).eval()
    images = torch.randn(batch_size, 3, size, size)
    features = backbone(images).float()
    weights_s = _median_seconds(lambda: check_finite_module(backbone, "backbone"), repeats)
    features_s = _median_seconds(lambda: check_finite_rows(features, "features"), repeats)
    forward_s = _median_seconds(lambda: backbone(images), repeats)
    return {
        "config": config,
        "parameters": sum(p.numel() for p in backbone.parameters()),
        "tensors": sum(1 for _ in backbone.parameters()) + sum(1 for _ in backbone.buffers()),
        "batch_size": batch_size,
        "crop_size": size,
        "weights_check_ms": 1e3 * weights_s,
        "features_check_ms": 1e3 * features_s,
        "forward_ms": 1e3 * forward_s,
        "weights_over_forward": weights_s / forward_s,
        "features_over_forward": features_s / forward_s,
        "threads": threads,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vitb16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the demo model, 2 repeats (smoke test)")
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    config, repeats = ("demo", 2) if args.quick else (args.config, args.repeats)
    r = measure(config, args.batch_size, repeats, args.threads)
    print(
        f"{r['config']}: {r['parameters'] / 1e6:.1f} M parameters in {r['tensors']} tensors; weights check "
        f"{r['weights_check_ms']:.2f} ms, features check {r['features_check_ms']:.3f} ms, forward of "
        f"{r['batch_size']} images at {r['crop_size']} px {r['forward_ms']:.1f} ms "
        f"(weights/forward {100 * r['weights_over_forward']:.1f}%, features/forward "
        f"{100 * r['features_over_forward']:.3f}%)"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
