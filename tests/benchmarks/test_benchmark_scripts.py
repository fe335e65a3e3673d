"""Smoke tests of benchmarks/*.py: each script runs end to end on a tiny --quick setting and writes a
JSON report whose structure and internal arithmetic are checked. Speed is never asserted (timings on a
shared CPU are noise); the numbers that must hold exactly are the FLOP counts and the ratios derived
from the measured times."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmarks import device_peaks
from dinolite.config import load_config
from dinolite.fsdp import sharding as fsdp_sharding
from dinolite.models.attention import explicit_attention
from dinolite.train.methods import get_method

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput() -> ModuleType:
    return load_script("train_throughput")


@pytest.fixture(scope="module")
def attention() -> ModuleType:
    return load_script("attention_backends")


@pytest.fixture
def restore_threads():
    """The in-process runs pass --threads 1; give pytest its thread count back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def flops_of(config: str, overrides: tuple[str, ...]) -> dict:
    """The model's own FLOP counter (fvcore tracing takes seconds: computed once per configuration)."""
    cfg = load_config(config, overrides)
    return get_method(cfg.train.method).training_flops(cfg)


def run_script(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def check_throughput_report(report: dict, world_size: int = 1) -> None:
    """Structure and arithmetic every train_throughput report must satisfy."""
    setup, results, machine = report["setup"], report["results"], report["machine"]
    assert report["benchmark"] == "train_throughput"
    assert machine["world_size"] == world_size
    batch, steps = setup["batch_size_per_device"], setup["timed_steps"]
    assert setup["global_batch_size"] == batch * world_size

    assert len(results["losses"]) == setup["warmup_steps"] + steps
    assert results["losses_finite"] and all(math.isfinite(v) and v > 0 for v in results["losses"])

    t_min, t_med, t_p90, t_max = (results[f"step_time_s_{k}"] for k in ("min", "median", "p90", "max"))
    assert 0 < t_min <= t_med <= t_p90 <= t_max
    assert t_med <= results["step_time_s_median_slowest_rank"]
    # images/s over the timed steps lies between batch/max and batch/min step time.
    ips = results["images_per_s_per_device"]
    assert batch / t_max <= ips * (1 + 1e-9) and ips <= batch / t_min * (1 + 1e-9)
    assert results["images_per_s_total"] == pytest.approx(ips * world_size)

    # FLOPs: the model's own counter on the configuration that actually ran (depth override included).
    expected = flops_of(setup["config"], tuple(setup["overrides"]))
    assert results["flops_per_image"] == expected["flops_per_image"] > 0
    assert results["flops_per_step_per_device"] == expected["flops_per_image"] * batch
    assert results["achieved_tflops_per_device"] == pytest.approx(results["flops_per_image"] * ips / 1e12)
    roofline = results["matmul_roofline"]
    assert 0 < roofline["median_tflops"] <= roofline["best_tflops"] and roofline["repeats"] >= 5
    assert results["mfu_vs_matmul_roofline"] == pytest.approx(
        results["achieved_tflops_per_device"] / roofline["median_tflops"]
    )
    assert results["peak_memory_gib"] > 0
    # iBOT masks come from the real collate function: some patches of the global crops are masked.
    assert results["masked_patches_per_global_crop_measured"] > 0


def test_train_throughput_quick_writes_json(throughput, tmp_path: Path, restore_threads, capsys):
    out = tmp_path / "nested" / "train.json"
    assert throughput.main(["--config", "demo", "--quick", "--threads", "1", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "images/s" in stdout and f"wrote {out}" in stdout
    report = json.loads(out.read_text())
    check_throughput_report(report)
    setup = report["setup"]
    assert (setup["depth"], setup["preset_depth"]) == (2, 4)  # --quick keeps 2 of the demo's 4 blocks
    assert setup["batch_size_per_device"] == 4 and setup["timed_steps"] == 3 and setup["warmup_steps"] == 1
    assert setup["precision"] == "float32" and setup["sharding"] is None  # one CPU process: plain modules
    assert report["machine"]["torch_threads"] == 1
    # No datasheet figure for a CPU: no made-up MFU.
    assert report["results"]["datasheet_peak_tflops"] is None and report["results"]["mfu_vs_datasheet"] is None
    # The shallow stand-in's FLOPs are scaled: fewer than the full-depth model's.
    full = flops_of("demo", ("train.batch_size_per_gpu=4",))
    assert report["results"]["flops_per_image"] < full["flops_per_image"]
    assert not list(out.parent.glob("*.tmp"))  # atomic write left no temporary file


def test_train_throughput_gpu_options_fall_back_on_cpu(
    throughput, tmp_path: Path, restore_threads, capsys, monkeypatch
):
    """--compile, --activation-checkpointing and bf16 autocast on CPU: without a C++ compiler compile is
    skipped with a note (tests/fsdp/test_distributed_gpu_paths.py compiles for real), checkpointing and
    bf16 run; a given --peak-tflops is used for the datasheet MFU; trailing key=value overrides reach the
    config."""
    monkeypatch.setattr(fsdp_sharding, "find_cpu_compiler", lambda: None)
    out = tmp_path / "fallback.json"
    with pytest.warns(UserWarning, match="torch.compile"):
        rc = throughput.main(
            [
                "--config",
                "demo",
                "--quick",
                "--iterations",
                "2",
                "--threads",
                "1",
                "--compile",
                "--activation-checkpointing",
                "--precision",
                "bf16",
                "--peak-tflops",
                "2.0",
                "--output",
                str(out),
                "data.source=[]",
            ]  # synthetic batches: a config without a data source (vits16 & co.) must run
        )
    assert rc == 0
    report = json.loads(out.read_text())
    check_throughput_report(report)
    setup, results = report["setup"], report["results"]
    assert setup["compile_requested"] and setup["activation_checkpointing_requested"]
    sharding = setup["sharding"]
    assert sharding["compile"] is False and sharding["activation_checkpointing"] is True
    assert sharding["fsdp"] is False and any("torch.compile" in note for note in sharding["notes"])
    assert setup["precision"] == "bfloat16" and results["matmul_roofline"]["dtype"] == "bfloat16"
    assert results["datasheet_peak_source"] == "--peak-tflops"
    assert results["mfu_vs_datasheet"] == pytest.approx(results["achieved_tflops_per_device"] / 2.0)
    assert "torch.compile on CPU needs a C++ compiler" in capsys.readouterr().out
    assert setup["overrides"][-1] == "data.source=[]"


def test_train_throughput_bad_config_is_a_clear_error(throughput, capsys):
    assert throughput.main(["--config", "no_such_preset", "--quick"]) == 2
    assert "no_such_preset" in capsys.readouterr().err
    # The trainer's own cross-section checks still apply: KoLeo needs 2 images per device.
    assert throughput.main(["--config", "demo", "--quick", "--batch-size", "1"]) == 2
    assert "train.batch_size_per_gpu=1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.parse_args(["--batch-size", "0"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_train_throughput_under_torchrun_uses_fsdp2(tmp_path: Path):
    out = tmp_path / "fsdp.json"
    run_script(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "benchmarks/train_throughput.py",
            "--config",
            "demo",
            "--quick",
            "--threads",
            "1",
            "--sharding-strategy",
            "full_shard",
            "--output",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    check_throughput_report(report, world_size=2)
    sharding = report["setup"]["sharding"]
    assert sharding["fsdp"] is True and sharding["strategy"] == "full_shard"


@pytest.mark.slow
def test_scripts_run_as_commands(tmp_path: Path):
    """Both scripts as a user runs them: a fresh interpreter, from the repository root, no install."""
    for script in ("train_throughput.py", "attention_backends.py"):
        out = tmp_path / f"{script}.json"
        proc = run_script([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1", "--output", str(out)])
        assert f"wrote {out}" in proc.stdout
        assert json.loads(out.read_text())["benchmark"] == script[: -len(".py")]


def test_datasheet_peaks_and_percentile(throughput):
    lookup = device_peaks.datasheet_peak_for_name
    assert lookup("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.4
    assert lookup("NVIDIA H100 PCIe", "bf16")[0] == 756.5  # not the SXM figure
    assert lookup("NVIDIA H100 NVL", "fp32")[0] == 60.0
    assert lookup("NVIDIA H200", "tf32")[0] == 494.7
    assert lookup("Tesla V100-SXM2-16GB", "bf16") == (None, "unknown GPU 'Tesla V100-SXM2-16GB' (pass --peak-tflops)")
    assert device_peaks.datasheet_peak_tflops(torch.device("cpu"), "fp32", 3.5) == (3.5, "--peak-tflops")
    assert device_peaks.datasheet_peak_tflops(torch.device("cpu"), "fp32", None)[0] is None
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert throughput.percentile(values, 50) == statistics.median(values)
    assert throughput.percentile(values, 90) == pytest.approx(4.6)  # 1..5, position 3.6
    assert throughput.percentile([7.0], 90) == 7.0


def test_attention_quick_writes_json(attention, tmp_path: Path, restore_threads, capsys):
    out = tmp_path / "attn.json"
    assert attention.main(["--quick", "--threads", "1", "--output", str(out)]) == 0
    assert "explicit" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["benchmark"] == "attention_backends" and report["dtype"] == "float32"
    rows = report["rows"]
    assert [r["backend"] for r in rows] == [
        "explicit",
        "sdpa",
        "sdpa_flash",
        "sdpa_efficient",
        "sdpa_cudnn",
        "sdpa_math",
        "xformers",
    ]
    by_backend = {r["backend"]: r for r in rows}
    for row in rows:
        assert (row["model"], row["resolution"], row["tokens"], row["heads"]) == ("vit_small", "224/16", 197, 6)
        assert row["forward_gflop"] == pytest.approx(4 * 1 * 6 * 197**2 * 64 / 1e9)
        if row["status"] == "ok":
            assert row["forward_ms"] > 0 and row["fwd_bwd_ms"] > 0
            assert row["agrees"] and row["max_abs_diff"] < 1e-4
            assert row["forward_ratio_vs_explicit"] == pytest.approx(
                row["forward_ms"] / by_backend["explicit"]["forward_ms"]
            )
        else:
            assert row["status"] == "skipped" and row["reason"]
    assert by_backend["explicit"]["status"] == by_backend["sdpa"]["status"] == "ok"
    assert by_backend["explicit"]["forward_ratio_vs_explicit"] == 1.0
    assert by_backend["xformers"]["status"] == "skipped"  # CPU: never xformers


def test_attention_backends_agree_at_518_tokens(attention, restore_threads):
    """The 518/14 sequence (1370 tokens) through the library call: SDPA and explicit agree in fp32."""
    torch.set_num_threads(1)
    shape = attention.AttentionShape("vit_small", heads=2, head_dim=64, img_size=518, patch_size=14, registers=4)
    assert shape.tokens == 37 * 37 + 1 + 4
    rows = attention.run_shape(shape, 1, torch.float32, torch.device("cpu"), ["explicit", "sdpa"], 1, 0.0)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["agrees"] for r in rows)


def test_naive_attention_is_the_formula(attention):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    weights = torch.exp(q @ k.transpose(-2, -1) / math.sqrt(8))
    expected = (weights / weights.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(attention.naive_attention(q, k, v), expected)
    reference, _ = explicit_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(reference.double(), expected, atol=1e-5, rtol=1e-5)
