"""Smoke test of benchmarks/decode_checks.py: it runs end to end (a tiny setting, and a 10 MB member
instead of 1.5 GB) and reports every figure RESULTS.md quotes. Speed is never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decode_checks_reports_every_figure():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/decode_checks.py", "--quick", "--hostile-gb", "0.01"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for row in ("| JPEG 500x375 |", "| PNG 500x375 |", "| GIF 500x375 |", "| BMP 500x375 |"):
        assert row in out
    for line in ("folder file read", ".tar.gz decompression per JPEG", "folder scan, 200 files", "bomb: 48,685 bytes"):
        assert line in out
    assert "lying GIF: 43 bytes, header 1x1, first frame 12000x12000" in out
    assert "one member of 10,000,000 bytes" in out and "(data.max_sample_bytes)" not in out  # within budget
    assert "the sample: read" in out
