"""Attention kernels at ViT shapes: SDPA (and each of its kernels), xformers, and the explicit formula.

For every (model, resolution) pair the script builds ``q, k, v`` of shape ``(B, heads, T, d_head)`` with
the model's heads (ViT-S 6, ViT-B 12, ViT-L 16; ``d_head = 64``) and the token count of that resolution
(``T = (img / patch)^2 + 1 + registers``: 197 at 224/16, 1370 at 518/14), then for each backend:

* times the forward and the forward + backward (median over repeats, after a warm-up);
* checks the output against :func:`dinolite.models.attention.explicit_attention` computed in float32
  (max abs difference, and ``agrees`` under a tolerance that depends on the dtype);
* on CUDA, records the peak memory of the forward + backward above what the inputs already hold.

Backends: ``explicit`` is ``softmax(Q K^T / sqrt(d)) V`` written out in the benchmark dtype (the way
implementations without a fused kernel compute it; the T x T matrix is materialised) and is the baseline
of the time ratios; ``sdpa`` is ``torch.nn.functional.scaled_dot_product_attention`` with torch's own
kernel choice (what dinolite's ``Attention`` calls); ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn``
/ ``sdpa_math`` pin one SDPA kernel with ``torch.nn.attention.sdpa_kernel`` (skipped, with torch's
reason, where the kernel does not support the device/dtype); ``xformers`` is
``xformers.ops.memory_efficient_attention`` (CUDA and installed only). A backend that cannot run is
reported with ``status: skipped`` and why, never silently dropped.

Usage::

    python benchmarks/attention_backends.py --device cpu --batch-size 1 --output attn.json
    python benchmarks/attention_backends.py --device cuda --batch-size 32          # bf16 on CUDA
    python benchmarks/attention_backends.py --quick --output /tmp/attn.json        # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from dinolite.io import write_json_atomic  # noqa: E402
from dinolite.models.attention import explicit_attention  # noqa: E402


@dataclass(frozen=True)
class AttentionShape:
    """One model's attention at one input resolution."""

    model: str
    heads: int
    head_dim: int
    img_size: int
    patch_size: int
    registers: int = 0

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1 + self.registers


# DINOv2's backbones: width = heads x 64.
MODEL_HEADS = {"vit_small": 6, "vit_base": 12, "vit_large": 16}
RESOLUTIONS = {"224/16": (224, 16), "518/14": (518, 14)}
ALL_BACKENDS = ("explicit", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "xformers")
# Max abs difference to the float32 reference below which a backend "agrees", per input dtype: float32
# kernels differ by summation order only; bf16 / fp16 carry 8 / 11 significant bits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d)) V`` in the inputs' dtype, T x T weights materialised (the baseline)."""
    weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
    return weights @ v


def _sdpa_with(kernel_name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = getattr(SDPBackend, kernel_name)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    # xformers wants (B, T, heads, d); the transposes are views, as in dinolite's Attention.
    return memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def backend_function(
    name: str, device: torch.device
) -> tuple[Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]], str]:
    """The callable for backend ``name``, or ``(None, reason)`` when it cannot run here."""
    if name == "explicit":
        return naive_attention, ""
    if name == "sdpa":
        return F.scaled_dot_product_attention, ""
    if name.startswith("sdpa_"):
        kernel = {
            "flash": "FLASH_ATTENTION",
            "efficient": "EFFICIENT_ATTENTION",
            "cudnn": "CUDNN_ATTENTION",
            "math": "MATH",
        }[name[len("sdpa_") :]]
        try:
            from torch.nn.attention import SDPBackend  # noqa: F401
        except ImportError:
            return None, "torch.nn.attention.sdpa_kernel is not available in this torch"
        if not hasattr(SDPBackend, kernel):
            return None, f"this torch has no SDPBackend.{kernel}"
        return _sdpa_with(kernel), ""
    if name == "xformers":
        if importlib.util.find_spec("xformers") is None:
            return None, "xformers is not installed"
        if device.type != "cuda":
            return None, f"xformers kernels need CUDA tensors, device is {device.type}"
        return _xformers, ""
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(ALL_BACKENDS)}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, min_repeats: int, min_seconds: float) -> float:
    """Median seconds of ``fn()`` over at least ``min_repeats`` calls and ``min_seconds`` (after 1 warm-up)."""
    fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < min_repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_backend(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    reference: torch.Tensor,
    min_repeats: int,
    min_seconds: float,
) -> dict[str, Any]:
    """Output check, forward time, forward + backward time (and CUDA peak memory) of one backend."""
    device = q.device
    with torch.no_grad():
        out = fn(q, k, v)
    max_abs_diff = float((out.float() - reference).abs().max())
    with torch.no_grad():
        forward_s = median_time(lambda: fn(q, k, v), device, min_repeats, min_seconds)

    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    grad_out = torch.randn_like(out)

    def forward_backward() -> None:
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(grad_out)

    result: dict[str, Any] = {"max_abs_diff": max_abs_diff}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward_backward()
        synchronize(device)
        result["fwd_bwd_peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    fwd_bwd_s = median_time(forward_backward, device, min_repeats, min_seconds)
    result.update(forward_ms=forward_s * 1e3, fwd_bwd_ms=fwd_bwd_s * 1e3)
    return result


def attention_flops(shape: AttentionShape, batch: int) -> int:
    """FLOPs of one attention forward: ``Q K^T`` and ``A V`` are each ``2 B H T^2 d``."""
    return 4 * batch * shape.heads * shape.tokens**2 * shape.head_dim


def run_shape(
    shape: AttentionShape,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    backends: Sequence[str],
    min_repeats: int,
    min_seconds: float,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """All backends on one shape; rows carry ``time_ratio_vs_explicit`` (< 1 = faster than explicit)."""
    generator = torch.Generator().manual_seed(seed)
    size = (batch, shape.heads, shape.tokens, shape.head_dim)
    q, k, v = (torch.randn(size, generator=generator).to(device=device, dtype=dtype) for _ in range(3))
    reference, _ = explicit_attention(q.float(), k.float(), v.float())
    del _  # the (B, H, T, T) weights are not needed here
    common = {
        "model": shape.model,
        "resolution": f"{shape.img_size}/{shape.patch_size}",
        "tokens": shape.tokens,
        "batch": batch,
        "heads": shape.heads,
        "head_dim": shape.head_dim,
        "dtype": str(dtype).replace("torch.", ""),
        "forward_gflop": attention_flops(shape, batch) / 1e9,
    }
    rows = []
    for name in backends:
        fn, reason = backend_function(name, device)
        row: dict[str, Any] = {**common, "backend": name}
        if fn is None:
            row.update(status="skipped", reason=reason)
        else:
            try:
                row.update(measure_backend(fn, q, k, v, reference, min_repeats, min_seconds), status="ok")
                row["agrees"] = row["max_abs_diff"] <= TOLERANCE[dtype]
                row["forward_tflops"] = row["forward_gflop"] / row["forward_ms"]  # GFLOP/ms = TFLOP/s
            except RuntimeError as exc:  # a pinned SDPA kernel that does not support this device/dtype/shape
                message = str(exc).strip().splitlines()[0][:300]
                row.update(status="skipped", reason=f"not supported for {device.type} {row['dtype']}: {message}")
        rows.append(row)
    explicit = next((r for r in rows if r["backend"] == "explicit" and r["status"] == "ok"), None)
    for row in rows:
        if explicit is not None and row["status"] == "ok":
            row["forward_ratio_vs_explicit"] = row["forward_ms"] / explicit["forward_ms"]
            row["fwd_bwd_ratio_vs_explicit"] = row["fwd_bwd_ms"] / explicit["fwd_bwd_ms"]
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/attention_backends.py",
        description="SDPA / xformers / explicit attention at ViT-S/B/L shapes: agreement and time ratios.",
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODEL_HEADS), help="default: all three")
    parser.add_argument("--resolutions", nargs="+", choices=sorted(RESOLUTIONS), help="default: both")
    parser.add_argument("--backends", nargs="+", choices=ALL_BACKENDS, help="default: all (explicit is the baseline)")
    parser.add_argument("--registers", type=int, default=0, help="register tokens added to every sequence")
    parser.add_argument("--batch-size", type=int, help="default 32 on CUDA, 1 on CPU")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many timed calls per measurement")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="and at least this long in all")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--quick", action="store_true", help="smoke setting: vit_small at 224/16, batch 1, 2 repeats")
    parser.add_argument("--output", type=Path, help="write the JSON report here (atomically)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["vit_small"]
        args.resolutions = args.resolutions or ["224/16"]
        args.batch_size = args.batch_size or 1
        args.repeats, args.min_seconds = 2, 0.0
    args.models = args.models or list(MODEL_HEADS)
    args.resolutions = args.resolutions or list(RESOLUTIONS)
    args.backends = args.backends or list(ALL_BACKENDS)
    if "explicit" not in args.backends:
        args.backends = ["explicit", *args.backends]  # the baseline of every ratio
    for key in ("batch_size", "repeats", "threads"):
        value = getattr(args, key)
        if value is not None and value <= 0:
            parser.error(f"--{key.replace('_', '-')}={value}: must be > 0")
    if args.registers < 0:
        parser.error(f"--registers={args.registers}: must be >= 0")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but CUDA is not available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'model':<10} {'res':<7} {'T':>5} {'backend':<15} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'fwd x':>7} {'f+b x':>7} {'max|diff|':>10} agrees"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lead = f"{r['model']:<10} {r['resolution']:<7} {r['tokens']:>5} {r['backend']:<15}"
        if r["status"] != "ok":
            lines.append(f"{lead} skipped: {r['reason']}")
            continue
        lines.append(
            f"{lead} {r['forward_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} {r.get('forward_ratio_vs_explicit', float('nan')):7.2f} "
            f"{r.get('fwd_bwd_ratio_vs_explicit', float('nan')):7.2f} {r['max_abs_diff']:10.2e} {r['agrees']}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    batch = args.batch_size or (32 if device.type == "cuda" else 1)
    rows: list[dict[str, Any]] = []
    for model in args.models:
        for res in args.resolutions:
            img, patch = RESOLUTIONS[res]
            shape = AttentionShape(model, MODEL_HEADS[model], 64, img, patch, args.registers)
            rows.extend(run_shape(shape, batch, dtype, device, args.backends, args.repeats, args.min_seconds))
    report = {
        "benchmark": "attention_backends",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "xformers_installed": importlib.util.find_spec("xformers") is not None,
        },
        "dtype": str(dtype).replace("torch.", ""),
        "tolerance": TOLERANCE[dtype],
        "rows": rows,
    }
    print(format_rows(rows))
    if args.output is not None:
        write_json_atomic(args.output, report)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
