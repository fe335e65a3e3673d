"""Every run of a lab plan read back from disk and judged: its metrics trace, result and random-init
baseline, the verdict on it, its comparison with its reference and the watchdog replayed over its log.

:func:`collect` gives the :class:`RunReport` list that the report's table
(:mod:`dinolite.lab.report`) and figures (:mod:`dinolite.lab.report_figures`) are drawn from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dinolite.lab.evaluate import random_init_baseline_path
from dinolite.lab.matrix import COMPARISONS, run_rules
from dinolite.lab.matrix_plan import LabPlan, PlannedRun
from dinolite.lab.traces import RunTrace, Series, WatchdogReplay, read_result, read_trace, replay_watchdog
from dinolite.lab.verdict import Comparison, Verdict, compare, judge


@dataclass
class RunReport:
    run: PlannedRun
    trace: RunTrace
    result: Optional[dict]
    verdict: Verdict
    watchdog: WatchdogReplay
    baseline: Optional[dict]
    comparison: Optional[Comparison] = None  # against the run's reference, when it names one

    @property
    def reproduced(self) -> bool:
        expect = self.run.spec.expect
        if expect in COMPARISONS:
            return self.comparison is not None and self.comparison.outcome == expect
        return self.verdict.reproduces(expect)


def eval_rank_series(result: Optional[dict]) -> Series:
    """RankMe of the evaluated backbone on the evaluation images at each kept checkpoint."""
    spectra = (result or {}).get("spectra") or []
    return Series([s["iteration"] for s in spectra], [s["rankme"] for s in spectra])


def collect(plan: LabPlan) -> list[RunReport]:
    """Read every run of the plan back from disk and judge it."""
    results = {run.label: read_result(run.run_dir) for run in plan.runs}
    traces = {run.label: read_trace(run.run_dir) for run in plan.runs}
    reports = []
    for run in plan.runs:
        trace = traces[run.label]
        result = results[run.label]
        diverged_at = result["iteration"] if result and result.get("status") == "diverged" else None
        reference = run.spec.reference
        verdict = judge(
            trace,
            run_rules(plan.matrix.verdict, run.spec),
            diverged_at,
            eval_rank_series(result),
            eval_rank_series(results.get(reference)) if reference else None,
            reference,
            traces.get(reference) if reference else None,
        )
        baseline = _read_json(random_init_baseline_path(run.config, plan.output_dir / "baselines", run.spec.features))
        comparison = compare(result, results.get(reference), plan.matrix.verdict, reference) if reference else None
        # the current watchdog rules (the planned config's), which may be newer than the run
        watchdog = replay_watchdog(run.config, trace)
        reports.append(RunReport(run, trace, result, verdict, watchdog, baseline, comparison))
    return reports


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None
