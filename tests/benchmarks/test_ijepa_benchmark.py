"""benchmarks/ijepa_context_encoder.py runs end to end on a tiny ViT and records what it measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ijepa_benchmark_writes_its_record(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("ijepa_bench", ROOT / "benchmarks" / "ijepa_context_encoder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ijepa.json"
    argv = [
        "--arch",
        "vit_tiny",
        "--img-size",
        "64",
        "--batch-size",
        "2",
        "--predictor-depth",
        "1",
        "--predictor-dim",
        "64",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--output",
        str(out),
    ]
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["patches"] == 16 and 0 < record["context_patches"] < 16
    assert set(record["seconds"]) == {"visible", "full_then_select", "encoder_only_visible", "encoder_only_full"}
    assert all(v > 0 for v in record["seconds"].values())
    assert 0 < record["encoder_block_flop_ratio"] < 1
