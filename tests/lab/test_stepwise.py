"""The stepwise-learning measurement (Simon et al. 2023, Fig. 1) on constructed eigenvalue traces."""

from __future__ import annotations

import json
import math

import pytest

from dinolite.lab.report import write_report
from dinolite.lab.run_reports import collect
from dinolite.lab.stepwise import STEPWISE_FIGURE, eigenvalue_series, measure_stepwise, plot_stepwise, stepwise_section
from dinolite.lab.traces import RunTrace, Series
from tests.lab.test_report import handmade_plan, write_run

ITERATIONS = list(range(0, 202, 2))


def sigmoid_rise(t0: float, plateau: float = 1.0, floor: float = 1e-6, width: float = 3.0) -> Series:
    """An eigenvalue that rises from ``floor`` to ``plateau`` around iteration ``t0``."""
    return Series(ITERATIONS, [floor + plateau / (1 + math.exp(min(700.0, -(it - t0) / width))) for it in ITERATIONS])


def test_a_staircase_is_three_steps_at_the_known_iterations():
    # eigenvalues 1-3 rise at 30, 60, 100; 4 never rises (stays at 1e-6)
    traces = {1: sigmoid_rise(30), 2: sigmoid_rise(60), 3: sigmoid_rise(100), 4: sigmoid_rise(1e9)}
    result = measure_stepwise(traces)
    assert result.threshold == pytest.approx(0.1, rel=1e-4)  # 0.1 x the final largest eigenvalue (1.0)
    # a sigmoid of width 3 reaches 0.1 at t0 - 3 ln 9 = t0 - 6.6: the first even iteration after it
    assert result.rises == ((1, 24), (2, 54), (3, 94))
    assert result.steps == ((1,), (2,), (3,))
    assert result.stepwise
    assert result.present == ()
    assert "3 of 4 eigenvalues rose from near zero" in result.describe() and "**stepwise**" in result.describe()


def test_eigenvalues_there_from_the_start_are_not_rises():
    """An ordinary initialisation: the embedding spans its directions from iteration 0 (within 2 decades of
    the threshold), so crossing the threshold later is no step."""
    traces = {1: sigmoid_rise(20, floor=0.5), 2: sigmoid_rise(60, floor=0.01), 3: sigmoid_rise(100, floor=1e-4)}
    result = measure_stepwise(traces)  # threshold 0.1 x 1.5: eig 1 and 2 start above 1.5e-3, eig 3 below
    assert result.present == (1, 2)
    assert result.rises == ((3, 96),) and result.steps == ((3,),)  # 1e-4 + sigmoid >= 0.15 from 94.8
    assert not result.stepwise
    assert result.describe().startswith("eig 1, 2 near the threshold from the start (no rise); 1 of 3")
    flat = measure_stepwise({1: Series(ITERATIONS, [1.0] * len(ITERATIONS))})
    assert flat.rises == () and "no eigenvalue of 1 rose from near zero" in flat.describe()


def test_eigenvalues_rising_together_are_one_step():
    traces = {k: sigmoid_rise(50 + k) for k in range(1, 6)}  # five rises within 5 iterations
    result = measure_stepwise(traces, min_gap=10)
    assert [k for k, _ in result.rises] == [1, 2, 3, 4, 5]
    assert result.steps == ((1, 2, 3, 4, 5),)
    assert not result.stepwise
    assert "not stepwise" in result.describe()


def test_the_gap_defaults_to_five_percent_of_the_trace():
    traces = {1: sigmoid_rise(30), 2: sigmoid_rise(38), 3: sigmoid_rise(70)}  # rises at 24, 32, 64
    result = measure_stepwise(traces)
    assert result.min_gap == 10  # 5% of 200 iterations
    assert result.steps == ((1, 2), (3,))
    assert measure_stepwise(traces, min_gap=5).steps == ((1,), (2,), (3,))


def test_no_trace_no_measurement():
    assert measure_stepwise({}) is None


def test_the_trace_is_read_from_the_projector_eigenvalues_the_monitor_logs():
    records = [
        {"iteration": it, "collapse/projector_eig_1": 2.0 * it, "collapse/projector_eig_2": float(it), "loss": 1.0}
        for it in (2, 4)
    ]
    series = eigenvalue_series(RunTrace.from_records(records))
    assert sorted(series) == [1, 2]
    assert series[1].values == [4.0, 8.0] and series[2].iterations == [2, 4]
    assert eigenvalue_series(RunTrace.from_records([{"iteration": 2, "loss": 1.0}])) == {}


def _write_staircase(run) -> None:
    """The handmade run's log with three eigenvalues rising at iterations 20, 50 and 80."""
    write_run(run.run_dir, run.config, 3.0, [14.0, 14.0])
    rises = {1: 20, 2: 50, 3: 80}  # ITERS of the handmade runs: 10, 20, ..., 100
    lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record.update(
            {f"collapse/projector_eig_{k}": (1.0 if record["iteration"] >= t else 1e-5) for k, t in rises.items()}
        )
    (run.run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_the_report_draws_the_figure_and_counts_the_steps_when_the_matrix_logs_eigenvalues(tmp_path):
    pytest.importorskip("matplotlib")
    plan, runs = handmade_plan(tmp_path)
    _write_staircase(runs["base"])
    page = write_report(plan).read_text()
    assert "Stepwise learning" not in page and "stepwise.png" not in page  # off unless the matrix asks for it
    plan.matrix.measurements.eigenvalues = 3
    page = write_report(plan)
    text = page.read_text()
    assert "`base`: 3 of 3 eigenvalues rose from near zero to 0.1 (eig 1 at 20, eig 2 at 50, eig 3 at 80)" in text
    assert "**stepwise**" in text
    assert "`one-prototype`: no eigenvalue trace logged" in text
    assert (page.parent / "stepwise.png").stat().st_size > 0
    # one way in for every optional section: the text before the runs, the figure after the report's own
    assert text.index("## Stepwise learning") < text.index("## Runs")
    assert text.index("### Training loss") < text.index(f"### {STEPWISE_FIGURE[1]}")


def test_the_section_is_there_only_with_the_matrixs_eigenvalues_and_its_figure_only_with_a_trace(tmp_path):
    pytest.importorskip("matplotlib")
    plan, runs = handmade_plan(tmp_path)
    out = tmp_path / "figures"
    out.mkdir()
    assert stepwise_section(plan, collect(plan), out) is None  # the matrix measured no eigenvalues
    plan.matrix.measurements.eigenvalues = 3
    untraced = stepwise_section(plan, collect(plan), out)
    assert untraced is not None and untraced.figures == () and not (out / "stepwise.png").exists()
    assert "`base`: no eigenvalue trace logged" in untraced.text
    _write_staircase(runs["base"])
    traced = stepwise_section(plan, collect(plan), out)
    assert traced.figures == (STEPWISE_FIGURE,) and (out / "stepwise.png").stat().st_size > 0
    assert "`base`: 3 of 3 eigenvalues rose" in traced.text


def test_no_figure_without_an_eigenvalue_trace(tmp_path):
    pytest.importorskip("matplotlib")
    assert not plot_stepwise([], tmp_path / "stepwise.png")
    assert not (tmp_path / "stepwise.png").exists()
