"""benchmarks/fashion_mnist_shards.py on its --quick setting: every layout is written and measured, and
the shipped one is the smallest on disk. Skipped without the Debian package."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.data.fashion_idx import needs_package

ROOT = Path(__file__).resolve().parents[2]


@needs_package
def test_quick_run_measures_every_layout(tmp_path: Path):
    spec = importlib.util.spec_from_file_location(
        "fashion_shards_bench", ROOT / "benchmarks" / "fashion_mnist_shards.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    layouts = report["layouts"]
    assert report["images"] == 500 and set(layouts) == set(bench.LAYOUTS)
    assert all(entry["us_per_image"] > 0 for entry in layouts.values())
    sizes = {name: entry["bytes_per_image"] for name, entry in layouts.items()}
    # the shipped layout: uncompressed grey PNGs in a gzip'd tar, the smallest; a plain tar costs a 512-byte
    # header and padding per member
    assert min(sizes, key=sizes.get) == "grey_png0_targz" and sizes["grey_png_tar"] > 1024, sizes
