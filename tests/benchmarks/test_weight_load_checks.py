"""Smoke test of benchmarks/weight_load_checks.py: it runs on a one-block ViT-S and its ratios are the
quotients of its own timings (speed is never asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "weight_load_checks.py"


def test_weight_load_checks_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_weight_load_checks", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--quick", "--output", str(tmp_path / "checks.json")])
    (result,) = json.loads((tmp_path / "checks.json").read_text())["results"]
    # cls/pos/mask tokens, patch embedding, final norm (7) and one block's 14 tensors
    assert (result["arch"], result["depth"], result["tensors"]) == ("vit_small", 1, 21)
    assert result["storage_over_pth"] == result["storage_ms"] / result["pth_ms"]
    assert result["budget_over_dcp"] == result["budget_ms"] / result["dcp_ms"]
