"""What a device can do, for the MFU of ``train_throughput.py``: datasheet peaks of known GPUs, a
matmul roofline measured in this process, and the description of the machine every report carries.

The roofline is the reference to trust (it shares the clocks, thermal state, library versions and, on a
shared CPU, the neighbours' load with the measured steps); the datasheet figure is for comparison with
published MFUs.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from typing import Any, Optional

import torch

# Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s from NVIDIA's H100 / H200 datasheets, matched on
# torch.cuda.get_device_name(). "fp32" is the non-tensor-core FP32 rate (torch's default for fp32
# matmuls); "tf32" applies when torch.get_float32_matmul_precision() is "high" or "medium".
# Order matters: the first substring found in the device name wins (NVL / PCIe before the plain name).
DATASHEET_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5, same die and clocks as H100 SXM
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roofline_tflops(
    device: torch.device, dtype: torch.dtype, size: int, min_repeats: int = 5, min_seconds: float = 0.5, seed: int = 0
) -> dict[str, float]:
    """Measured throughput of ``(n x n) @ (n x n)`` in ``dtype`` (``2 n^3`` FLOPs each).

    Times at least ``min_repeats`` products and at least ``min_seconds`` in all (after one untimed
    warm-up). Returns the median and the best; the median is the roofline used for MFU because step
    times are reported as medians too.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    torch.matmul(a, b)
    synchronize(device)
    times: list[float] = []
    while len(times) < min_repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    flops = 2.0 * size**3
    return {
        "size": size,
        "repeats": len(times),
        "dtype": str(dtype).replace("torch.", ""),
        "median_tflops": flops / statistics.median(times) / 1e12,
        "best_tflops": flops / min(times) / 1e12,
    }


def matmul_precision_key(autocast_dtype: Optional[torch.dtype]) -> str:
    """Datasheet column of the step's matmuls: bf16 under autocast, else fp32 or tf32 per torch's setting."""
    if autocast_dtype == torch.bfloat16:
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def datasheet_peak_tflops(
    device: torch.device, precision_key: str, override: Optional[float]
) -> tuple[Optional[float], str]:
    """The peak to divide by: ``override`` if given, else the datasheet figure for a known GPU, else None."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, f"unknown for {device.type} (pass --peak-tflops)"
    return datasheet_peak_for_name(torch.cuda.get_device_name(device), precision_key)


def datasheet_peak_for_name(device_name: str, precision_key: str) -> tuple[Optional[float], str]:
    """Look ``device_name`` up in :data:`DATASHEET_PEAK_TFLOPS`: ``(TFLOP/s, source)`` or ``(None, why)``."""
    for key, peaks in DATASHEET_PEAK_TFLOPS:
        if key in device_name:
            return peaks[precision_key], f"datasheet {key} {precision_key} dense"
    return None, f"unknown GPU {device_name!r} (pass --peak-tflops)"


def machine_info(device: torch.device, world_size: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "world_size": world_size,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info
