"""The GPUs and links the planner predicts for: datasheet figures, each with its source.

Peaks are dense (no 2:4 sparsity) tensor-core rates in TFLOP/s. ``memory_gib`` is the memory the card
reports to CUDA (what ``torch.cuda.get_device_properties(0).total_memory`` gives, in GiB).
``nvlink_gbs`` is the NVLink bandwidth per GPU in one direction (GB/s, 10^9 bytes): what a ring collective
inside a node moves data at. ``network_gbs`` is the inter-node bandwidth per GPU in one direction, for the
reference systems of each generation (one InfiniBand adapter per GPU): DGX A100 has 8 x HDR 200 Gb/s
(25 GB/s per GPU), DGX H100 / H200 8 x NDR 400 Gb/s (50 GB/s per GPU). Clusters differ: ``--network-gbs``
overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: dict[str, float]  # "bf16" / "fp16" (tensor cores), "tf32", "fp32" (non-tensor-core)
    memory_gib: float
    nvlink_gbs: float
    network_gbs: float
    source: str


_A100_PEAKS = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
_A100_SOURCE = (
    "NVIDIA A100 Tensor Core GPU datasheet (SXM): 312 TFLOP/s bf16/fp16, 156 tf32, 19.5 fp32; NVLink 3 600 GB/s "
    "total (300 per direction); DGX A100 user guide: 8 x 200 Gb/s HDR InfiniBand for the cluster network"
)
_H_PEAKS = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}
_H_SOURCE = (
    "NVIDIA {0} datasheet (SXM5): 1,979 TFLOP/s bf16/fp16 with sparsity = 989.4 dense, 494.7 tf32 dense, "
    "66.9 fp32; NVLink 4 900 GB/s total (450 per direction); DGX {0}: 8 x 400 Gb/s NDR (ConnectX-7)"
)

GPUS: dict[str, GPU] = {
    "a100-40gb": GPU("a100-40gb", _A100_PEAKS, 40.0, 300.0, 25.0, _A100_SOURCE),
    "a100-80gb": GPU("a100-80gb", _A100_PEAKS, 80.0, 300.0, 25.0, _A100_SOURCE),
    "h100": GPU("h100", _H_PEAKS, 79.6, 450.0, 50.0, _H_SOURCE.format("H100")),
    "h200": GPU("h200", _H_PEAKS, 140.4, 450.0, 50.0, _H_SOURCE.format("H200") + "; 141 GB HBM3e"),
}


def get_gpu(name: str) -> GPU:
    """The GPU called ``name`` (case-insensitive); a clear error listing the known ones otherwise."""
    gpu = GPUS.get(name.lower())
    if gpu is None:
        raise ValueError(f"--gpu {name!r} is not one of {', '.join(GPUS)} (add a row to dinolite/plan/hardware.py)")
    return gpu
