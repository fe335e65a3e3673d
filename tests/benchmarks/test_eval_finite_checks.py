"""Smoke test of benchmarks/eval_finite_checks.py: runs on the demo model and reports consistent numbers
(never asserts a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_a_consistent_report(tmp_path):
    out = tmp_path / "eval_checks.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval_finite_checks.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"] == "demo" and report["tensors"] > 0 and report["parameters"] > 0
    assert report["weights_check_ms"] > 0 and report["features_check_ms"] > 0 and report["forward_ms"] > 0
    assert abs(report["weights_over_forward"] - report["weights_check_ms"] / report["forward_ms"]) < 1e-9
