"""I-JEPA's compute saving: the context encoder runs on the visible context patches only.

For a ViT at 224 px (patch 16: a 14 x 14 grid) and a batch of I-JEPA multi-block masks (4 targets of
scale (0.15, 0.2), one context block of scale (0.85, 1.0) minus the targets; see
:mod:`dinolite.data.masked_views`), the script times one student step (forward + backward, AdamW-free:
gradients only) in three ways:

* ``visible``: what dinolite's I-JEPA does -- ``forward_features(x, keep_indices=context)`` (the blocks
  see ``1 + Nc`` tokens) + the predictor;
* ``full_then_select``: the context encoder encodes every patch and the context tokens are selected
  afterwards (what an implementation without the visible-token path would have to do to keep the
  predictor's input the same), + the predictor;
* ``encoder_only``: the two encoder passes alone (no predictor), to separate the encoder's saving.

Median wall time over repeats after a warm-up, on the chosen device; the FLOP ratio from the method's
``training_flops`` counting rule is printed beside it for comparison.

    python benchmarks/ijepa_context_encoder.py --arch vit_small --batch-size 8 --output ijepa.json
    python benchmarks/ijepa_context_encoder.py --device cuda --arch vit_base --batch-size 64
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from dinolite.data.masked_views import MultiBlockMaskGenerator
from dinolite.io import write_json_atomic
from dinolite.models import backbone_factory
from dinolite.models.predictor import IJEPAPredictor
from dinolite.train.methods.masked_common import transformer_macs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small", choices=sorted(backbone_factory.ARCHITECTURES))
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--predictor-depth", type=int, default=6)
    parser.add_argument("--predictor-dim", type=int, default=384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    use_bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda")
    torch.manual_seed(args.seed)
    encoder = backbone_factory.FACTORIES[args.arch](patch_size=args.patch_size, img_size=args.img_size).to(device)
    grid = args.img_size // args.patch_size
    predictor = IJEPAPredictor(
        grid, encoder.embed_dim, args.predictor_dim, args.predictor_depth, num_heads=max(1, args.predictor_dim // 64)
    ).to(device)
    masks = MultiBlockMaskGenerator(grid, min_keep=10)
    context_idx, target_idx = (t.to(device) for t in masks(args.batch_size, torch.Generator().manual_seed(args.seed)))
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def visible(with_predictor: bool) -> None:
        with autocast():
            tokens = encoder.forward_features(images, keep_indices=context_idx)["x_norm_patchtokens"]
            out = predictor(tokens, context_idx, target_idx) if with_predictor else tokens
        out.float().square().mean().backward()

    def full_then_select(with_predictor: bool) -> None:
        with autocast():
            tokens = encoder.forward_features(images)["x_norm_patchtokens"]
            tokens = torch.gather(tokens, 1, context_idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            out = predictor(tokens, context_idx, target_idx) if with_predictor else tokens
        out.float().square().mean().backward()

    results: dict[str, float] = {}
    for name, fn in (
        ("visible", lambda: visible(True)),
        ("full_then_select", lambda: full_then_select(True)),
        ("encoder_only_visible", lambda: visible(False)),
        ("encoder_only_full", lambda: full_then_select(False)),
    ):
        results[name] = median_time(fn, device, args.repeats, args.warmup)
        encoder.zero_grad(set_to_none=True)
        predictor.zero_grad(set_to_none=True)

    n_context, n_patches = context_idx.shape[1], grid * grid
    dim, depth = encoder.embed_dim, encoder.n_blocks
    flop_ratio = transformer_macs(1 + n_context, dim, depth) / transformer_macs(1 + n_patches, dim, depth)
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "bf16": use_bf16,
        "predictor": [args.predictor_depth, args.predictor_dim],
        "context_patches": n_context,
        "patches": n_patches,
        "targets": list(target_idx.shape[1:]),
        "seconds": results,
        "step_speedup": results["full_then_select"] / results["visible"],
        "encoder_speedup": results["encoder_only_full"] / results["encoder_only_visible"],
        "encoder_block_flop_ratio": flop_ratio,
    }
    print(f"{args.arch} {args.img_size}px batch {args.batch_size} on {device}: context {n_context}/{n_patches} patches")
    for name, seconds in results.items():
        print(f"  {name:<22s} {seconds * 1000:9.1f} ms")
    print(
        f"  step speed-up (full -> visible): {record['step_speedup']:.2f}x; encoder alone "
        f"{record['encoder_speedup']:.2f}x (block FLOPs ratio {flop_ratio:.2f})"
    )
    if args.output:
        write_json_atomic(args.output, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
