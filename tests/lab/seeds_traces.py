"""Traces of runs of the seeds matrix, kept as fixtures so that the verdict code can be checked against the
committed report (docs/lab/seeds/README.md) on real data.

A fixture run holds what the report reads back from a run folder, trimmed to what the verdict, the
watchdog replay and the report's table use: ``metrics.jsonl`` with the iteration, the loss and the
``collapse/...`` metrics of each record (full precision); ``lab_result.json`` without its timings
(spectra eigenvalues kept to 4 significant digits: the table reads only their count and the stored
RankMe); and the random-init baselines. The runs are deterministic on CPU: a run made again with the same
code gives the committed report's row bit for bit.

Regenerate (only on purpose, from a lab output folder holding finished runs of the seeds matrix):

    python launch/lab.py --matrix seeds --output-dir /tmp/lab-seeds --only LABEL ...
    PYTHONPATH=. python tests/lab/seeds_traces.py /tmp/lab-seeds LABEL ...
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "seeds"
KEPT_RESULT_KEYS = ("label", "status", "iteration", "message", "knn", "linear", "chance", "spectra")


def trim_metrics(lines: list[str]) -> list[str]:
    """Each record's iteration, loss and collapse metrics (records with none of them are dropped)."""
    out = []
    for line in lines:
        record = json.loads(line)
        kept = {k: v for k, v in record.items() if k in ("iteration", "loss") or k.startswith("collapse/")}
        if len(kept) > 1:
            out.append(json.dumps(kept))
    return out


def trim_result(result: dict) -> dict:
    """The result without timings, its spectra's eigenvalues rounded (only their count is read)."""
    kept = {k: result[k] for k in KEPT_RESULT_KEYS if k in result}
    kept["spectra"] = [
        {**s, "eigenvalues": [float(f"{v:.4g}") for v in s["eigenvalues"]]} for s in result.get("spectra") or []
    ]
    return kept


def write_fixture(lab_dir: Path, label: str, fixtures: Path = FIXTURES) -> None:
    source, target = lab_dir / label, fixtures / label
    target.mkdir(parents=True, exist_ok=True)
    lines = (source / "metrics.jsonl").read_text().splitlines()
    (target / "metrics.jsonl").write_text("\n".join(trim_metrics(lines)) + "\n")
    result = json.loads((source / "lab_result.json").read_text())
    (target / "lab_result.json").write_text(json.dumps(trim_result(result), indent=1) + "\n")
    baselines = fixtures / "baselines"
    baselines.mkdir(exist_ok=True)
    for path in (lab_dir / "baselines").glob("*.json"):
        shutil.copyfile(path, baselines / path.name)


if __name__ == "__main__":
    for run_label in sys.argv[2:]:
        write_fixture(Path(sys.argv[1]), run_label)
