"""Smoke test of benchmarks/finite_check_overhead.py: runs on the demo model and reports consistent numbers
(never asserts a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "finite.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "finite_check_overhead.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"] == "demo" and report["tensors"] > 0 and report["parameters"] > 0
    assert report["check_ms"] > 0 and report["adamw_step_ms"] > 0
    assert abs(report["check_over_adamw"] - report["check_ms"] / report["adamw_step_ms"]) < 1e-9
