"""The markdown block ``gpu_first_contact.py`` writes for ``benchmarks/RESULTS.md``: the machine (GPU name,
memory, driver, torch, CUDA), the command, the smoke checks and the ladder's rows."""

from __future__ import annotations

import datetime
import platform
import shutil
import subprocess
from typing import Any, Optional, Sequence

import torch

from benchmarks.first_contact_checks import StageResult


def nvidia_driver() -> str:
    """The driver version as ``nvidia-smi`` reports it (torch does not expose it), or why it is unknown."""
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (nvidia-smi: {type(exc).__name__})"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown (nvidia-smi printed nothing)"


def machine_summary(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            memory_gib=props.total_memory / 2**30,
            driver=nvidia_driver(),
            cuda=torch.version.cuda,
            multiprocessors=props.multi_processor_count,
        )
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine())
    return info


def machine_line(machine: dict[str, Any]) -> str:
    if machine["gpu"] is None:
        return f"CPU ({machine['cpu']}), torch {machine['torch']}, Python {machine['python']}"
    return (
        f"{machine['gpu']}, {machine['memory_gib']:.1f} GiB, {machine['multiprocessors']} SMs, driver "
        f"{machine['driver']}, CUDA {machine['cuda']}, torch {machine['torch']}, Python {machine['python']}"
    )


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def ladder_row(result: StageResult) -> str:
    d = result.data
    if result.status != "ok" or not d:
        return f"| {result.name} | | | | | | | | | {result.status}: {result.detail} ({result.seconds:.0f} s) |"
    compiled = "on" if d["compile_applied"] else ("off" if not d["compile_requested"] else "asked, eager")
    return (
        f"| {d['model']} | {d['crops']} | {d['batch']} | {d['precision']}, compile {compiled} | "
        f"{d['images_per_s_per_device']:.1f} | {d['step_time_s_median'] * 1e3:.1f} | "
        f"{d['achieved_tflops_per_device']:.2f} | {_percent(d['mfu_vs_matmul_roofline'])} "
        f"(of {d['roofline_tflops']:.3g}) | {_percent(d['mfu_vs_datasheet'])} | "
        f"{d['peak_memory_gib']:.2f} | ok ({result.seconds:.0f} s){'; ' + result.detail if result.detail else ''} |"
    )


def format_markdown(
    machine: dict[str, Any],
    command: str,
    smoke: Sequence[StageResult],
    ladder: Sequence[StageResult],
    notes: Sequence[str],
    finished: bool,
) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    memory_kind = "CUDA max_memory_allocated, timed steps" if machine["gpu"] else "process peak RSS"
    lines = [
        f"### GPU first contact: {machine['gpu'] or 'CPU'} ({date}){'' if finished else ' - in progress'}",
        "",
        f"Machine: {machine_line(machine)}.",
        "",
        "```bash",
        command,
        "```",
        "",
        "| check | result | detail | s |",
        "|---|---|---|---|",
        *(f"| {r.name} | {r.status} | {r.detail} | {r.seconds:.0f} |" for r in smoke),
        "",
        f"| model | crops | batch/GPU | precision | img/s | step ms | TFLOP/s | MFU (matmul roofline TFLOP/s) | "
        f"MFU (datasheet) | peak GiB ({memory_kind}) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(ladder_row(r) for r in ladder),
        "",
        *(f"- {note}" for note in notes),
        "",
    ]
    return "\n".join(lines)
