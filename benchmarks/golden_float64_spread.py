"""How far float64 rounding moves the DINOv2 golden step between CPU kernel paths (issue 23).

The float64 golden step (tests/train/test_golden_step.py) passes where every tensor is within
``FLOAT64_RTOL`` of the float64 fixture. This script measures what rounding alone does to those tensors:
it recomputes the float64 record of each case in a fresh process per setting (ATen's kernel capability,
MKL's and oneDNN's instruction sets, glibc's libm variants, the thread count), compares each with the
committed fixture by the test's own measure and reports the worst relative error per setting, next to
the tolerance. Settings the CPU cannot run (a capability above its own) are reported as skipped.

    PYTHONPATH=. python benchmarks/golden_float64_spread.py [--quick] [--cases demo vits16] [--output JSON]

``--quick`` runs the demo case under the native and the scalar ("default") kernels only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, str(ROOT))

from tests.train.golden_step import CASES, FLOAT64_RTOL, read_fixture, relative_error  # noqa: E402

# name -> (environment variables, threads); "native" sets nothing.
SETTINGS: dict[str, tuple[dict[str, str], int]] = {
    "native": ({}, 1),
    "native, 2 threads": ({}, 2),
    "ATen avx512": ({"ATEN_CPU_CAPABILITY": "avx512"}, 1),
    "ATen avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1),
    "ATen default": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "AVX2-only machine (ATen, MKL, oneDNN)": (
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        1,
    ),
    "pre-AVX machine (ATen, MKL, oneDNN, libm without FMA)": (
        {
            "ATEN_CPU_CAPABILITY": "default",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2_Usable,-FMA_Usable,-AVX2,-FMA",
        },
        1,
    ),
}
QUICK = ("native", "ATen default")
_CHILD = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from tests.train.golden_step import compute_record
torch.save(compute_record(sys.argv[2], "float64", threads=int(sys.argv[3])), sys.argv[4])
print(torch.backends.cpu.get_cpu_capability())
"""


def record_under(case: str, env: dict[str, str], threads: int, out: Path) -> str | None:
    """Run the float64 golden record of ``case`` in a fresh process; its kernel capability, None if refused."""
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **env}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), case, str(threads), str(out)],
        env=full_env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case} under {env}: {done.stderr.strip().splitlines()[-1:]}")
    capability = done.stdout.strip().splitlines()[-1]
    wanted = env.get("ATEN_CPU_CAPABILITY")
    return None if wanted and capability.lower() != wanted.lower() else capability


def spread(case: str, record: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The worst relative error against the committed fixture and the tensor it is in."""
    expected, _ = read_fixture(case, "float64")
    worst = max(
        (relative_error(key, record[key], value), key) for key, value in expected.items() if not key.endswith(".sha256")
    )
    digests = [
        key for key, value in expected.items() if key.endswith(".sha256") and not torch.equal(record[key], value)
    ]
    if digests:
        raise RuntimeError(f"{case}: inputs differ from the fixture's: {digests}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=sorted(CASES), choices=sorted(CASES))
    parser.add_argument("--quick", action="store_true", help="demo only, native and scalar kernels")
    parser.add_argument("--output", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    cases = ["demo"] if args.quick else args.cases
    names = QUICK if args.quick else tuple(SETTINGS)
    report: dict = {"benchmark": "golden_float64_spread", "tolerance": FLOAT64_RTOL, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for name in names:
                env, threads = SETTINGS[name]
                capability = record_under(case, env, threads, Path(tmp) / "record.pt")
                row = {"case": case, "setting": name, "capability": capability}
                if capability is None:
                    row["skipped"] = "this CPU cannot run that kernel capability"
                else:
                    error, key = spread(case, torch.load(Path(tmp) / "record.pt", weights_only=True))
                    # margin: how many times the worst error fits in the tolerance (None: identical bits)
                    row.update(
                        worst_relative_error=error,
                        worst_tensor=key if error > 0 else None,
                        margin=FLOAT64_RTOL / error if error > 0 else None,
                    )
                report["results"].append(row)
                print(json.dumps(row), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.output.with_suffix(args.output.suffix + ".tmp")
        tmp_path.write_text(json.dumps(report, indent=2))
        tmp_path.replace(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
