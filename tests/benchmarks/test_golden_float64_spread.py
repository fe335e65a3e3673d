"""Smoke test of benchmarks/golden_float64_spread.py: the demo's float64 golden step under the native and
the scalar kernels, each compared with the committed fixture within the golden test's tolerance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.train.golden_step import FLOAT64_RTOL

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_the_spread_within_the_tolerance(tmp_path):
    out = tmp_path / "spread.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "golden_float64_spread.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "golden_float64_spread" and report["tolerance"] == FLOAT64_RTOL
    rows = {row["setting"]: row for row in report["results"]}
    assert set(rows) == {"native", "ATen default"} and all(row["case"] == "demo" for row in rows.values())
    assert rows["ATen default"]["capability"] == "DEFAULT"
    for row in rows.values():
        assert 0 <= row["worst_relative_error"] <= FLOAT64_RTOL, row
        assert (row["margin"] is None) == (row["worst_relative_error"] == 0), row
