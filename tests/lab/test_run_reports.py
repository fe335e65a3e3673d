"""The committed seeds report (docs/lab/seeds/README.md) is what the current code makes of the runs' traces.

Real runs of the seeds matrix, trimmed to what the report reads (tests/lab/fixtures/seeds, written by
tests/lab/seeds_traces.py from runs made again on this machine: they are deterministic on CPU), are read
back by the lab's own code path (``collect``: the verdict by the collapse rules, the watchdog replayed
with the methods' current rules, the comparison with the reference) and give the report's summary rows
exactly: verdict, since when, the watchdog's first alert, reproduced or not, and the numbers behind them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.report import summary_table
from dinolite.lab.run_reports import collect
from tests.lab.seeds_traces import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "lab" / "seeds" / "README.md"
LABELS = sorted(path.name for path in FIXTURES.iterdir() if (path / "metrics.jsonl").is_file())


def committed_rows() -> dict[str, str]:
    """The summary table's row of each run of the committed report, by label."""
    rows = {}
    for line in REPORT.read_text().splitlines():
        if line.startswith("| `"):
            rows.setdefault(line.split("`")[1], line)
    return rows


@pytest.fixture(scope="module")
def rows_from_traces() -> dict[str, str]:
    plan = plan_matrix("seeds", output_dir=FIXTURES, prepare=False)
    reports = {report.run.label: report for report in collect(plan)}
    lines = summary_table([reports[label] for label in LABELS]).splitlines()[2:]
    return dict(zip(LABELS, lines))


def test_the_fixture_runs_cover_every_kind_of_finding():
    """Complete collapse by each output rule, dimensional collapse absolute and against a reference, a
    healthy run whose backbone reads collapsed, and a finding the report does not reproduce."""
    covered = {"dino-no-ema", "simsiam-no-stopgrad", "barlow-twins-no-redundancy", "simsiam", "simsiam-no-predictor"}
    assert covered <= set(LABELS)
    assert "| no |" in committed_rows()["simsiam-no-predictor"]  # expected complete, read dimensional


@pytest.mark.parametrize("label", LABELS)
def test_a_run_read_back_from_its_traces_gives_the_committed_row(label, rows_from_traces):
    assert rows_from_traces[label] == committed_rows()[label]
