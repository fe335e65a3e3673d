"""The lab's verdict logic and trace reading on constructed metric traces (no training)."""

from __future__ import annotations

import json
import math

import pytest

from dinolite.config import WatchdogThreshold, load_config
from dinolite.lab.matrix import BETTER, COMPLETE, DIMENSIONAL, HEALTHY, ON_PAR, WORSE, LabRun, VerdictRules, run_rules
from dinolite.lab.traces import RunTrace, read_trace, replay_watchdog
from dinolite.lab.verdict import DIVERGED, NO_DATA, compare, judge, persistent_since

ITERS = list(range(10, 210, 10))  # 20 measurements of a 200-iteration run
RULES = VerdictRules()


def trace_of(**series: list[float]) -> RunTrace:
    """A trace with one collapse record and one training record per iteration of ITERS.

    Keyword names are metric names with ``/`` written as ``__`` (``collapse__backbone_std_ratio``).
    ``*_std_ratio`` values also give the ``*_std`` key the channel lookup needs.
    """
    records = []
    for i, it in enumerate(ITERS):
        collapse = {"iteration": it, "collapse/num_samples": 64.0}
        for name, values in series.items():
            if name == "loss":
                continue
            key = name.replace("__", "/")
            collapse[key] = values[i]
            if key.endswith("_std_ratio"):
                collapse[key.replace("_std_ratio", "_std")] = values[i] / math.sqrt(96)
        records.append(collapse)
        records.append({"iteration": it, "loss": series.get("loss", [1.0] * len(ITERS))[i]})
    return RunTrace.from_records(records)


def flat(value: float) -> list[float]:
    return [value] * len(ITERS)


def ramp(start: float, end: float) -> list[float]:
    return [start + (end - start) * i / (len(ITERS) - 1) for i in range(len(ITERS))]


def healthy_series() -> dict[str, list[float]]:
    # early training looks collapsed (low std, low rank), then spreads out: must not count as collapse
    return {
        "collapse__backbone_std_ratio": [0.05, 0.08, 0.2] + ramp(0.4, 0.8)[3:],
        "collapse__backbone_rankme_ratio": [0.05, 0.1, 0.2] + ramp(0.4, 0.6)[3:],
        "collapse__head_std_ratio": ramp(0.3, 0.7),
        "collapse__head_rankme_ratio": ramp(0.3, 0.5),
    }


def backbone_only() -> dict[str, list[float]]:
    """A method without a head (DirectCLR, SimCLR without projector): its backbone is its output."""
    return {k: v for k, v in healthy_series().items() if "backbone" in k}


def test_healthy_run_with_collapsed_looking_start_is_healthy():
    verdict = judge(trace_of(**healthy_series()), RULES)
    assert verdict.kind == HEALTHY
    assert verdict.since is None and verdict.findings == []
    assert verdict.evidence["backbone_std_ratio"] == pytest.approx(0.8)
    assert verdict.reproduces(HEALTHY) and not verdict.reproduces(COMPLETE)


def test_simsiam_without_stopgrad_std_to_zero_is_complete_collapse_from_when_it_stays_low():
    # std x sqrt(d) of the predictor output falls from 0.8 and stays below 0.1 from iteration 60 on (SimSiam
    # Fig. 2); the projector ends in BatchNorm, which holds its std at ~0.6
    std = [0.8, 0.6, 0.4, 0.2, 0.12, 0.09] + [0.01] * (len(ITERS) - 6)
    series = healthy_series() | {"collapse__projector_std_ratio": flat(0.6), "collapse__predictor_std_ratio": std}
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == COMPLETE
    assert verdict.since == 60
    assert verdict.mode == "constant predictor output"
    assert verdict.reproduces(COMPLETE)
    # without a head the backbone is the output, and the same rule reads it
    verdict = judge(trace_of(**backbone_only() | {"collapse__backbone_std_ratio": std}), RULES)
    assert verdict.kind == COMPLETE and verdict.mode == "constant backbone output" and verdict.since == 60


def test_an_anisotropic_backbone_under_healthy_heads_is_healthy():
    """The healthy SimSiam run of the seeds report (docs/monitor.md#thresholds): its backbone CLS is far
    from isotropic (the traces below) while its projector and predictor are spread out. With heads, the
    absolute rules read the heads; the backbone would count only against a reference run."""
    series = {
        "collapse__backbone_std_ratio": [0.26, 0.10] + [0.09] * 18,
        "collapse__backbone_rankme_ratio": [0.043] + [0.035] * 19,
        "collapse__projector_std_ratio": flat(0.97),
        "collapse__projector_rankme_ratio": flat(0.22),
        "collapse__predictor_std_ratio": flat(0.95),
        "collapse__predictor_rankme_ratio": flat(0.13),
    }
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == HEALTHY and verdict.findings == []
    assert verdict.evidence["backbone_std_ratio"] == pytest.approx(0.09)


def test_outputs_on_one_line_are_complete_collapse_even_when_batchnorm_keeps_the_std_up():
    # SimSiam without stop-gradient: a projector ending in BatchNorm (no affine) keeps std x sqrt(d) ~0.5-1,
    # but every output lies on one line (RankMe -> 1)
    rank = [20.0, 6.0] + [1.2] * 18
    series = healthy_series() | {
        "collapse__head_std_ratio": flat(0.6),
        "collapse__head_rankme": rank,
        "collapse__head_rankme_ratio": [r / 32 for r in rank],
    }
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == COMPLETE and verdict.mode == "one-direction projector" and verdict.since == 30
    rank = [20.0, 6.0] + [2.4] * 18  # two directions (0.075 of 32): neither complete nor below the 0.05 floor
    series |= {"collapse__head_rankme": rank, "collapse__head_rankme_ratio": [r / 32 for r in rank]}
    assert judge(trace_of(**series), RULES).kind == HEALTHY


def test_one_prototype_from_teacher_mean_entropy():
    mean_entropy = [0.6, 0.3, 0.05] + [1e-6] * (len(ITERS) - 3)
    series = healthy_series() | {
        "collapse__teacher_mean_entropy_norm": mean_entropy,
        "collapse__teacher_entropy_norm": [1e-6] * len(ITERS),
    }
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == COMPLETE and verdict.mode == "one prototype" and verdict.since == 30


def test_uniform_output_from_teacher_entropy():
    series = healthy_series() | {
        "collapse__teacher_entropy_norm": ramp(0.5, 0.9)[:10] + [0.999] * 10,
        "collapse__teacher_mean_entropy_norm": flat(0.999),
    }
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == COMPLETE and verdict.mode == "uniform output" and verdict.since == 110


def test_dimensional_collapse_spread_but_low_rank():
    series = backbone_only() | {"collapse__backbone_rankme_ratio": [0.3] * 5 + [0.02] * 15}
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == DIMENSIONAL and verdict.mode == "low-rank backbone" and verdict.since == 60
    assert not verdict.reproduces(COMPLETE)
    # a small healthy network's low effective rank (the DINO demo: ~0.13-0.2) is not dimensional collapse
    series = backbone_only() | {"collapse__backbone_rankme_ratio": flat(0.13)}
    assert judge(trace_of(**series), RULES).kind == HEALTHY


def test_dimensional_collapse_relative_to_a_reference_run():
    from dinolite.lab.traces import Series

    checkpoints = [50, 100, 150, 200]
    reference = Series(checkpoints, [10.0, 20.0, 24.0, 25.0])  # e.g. SimCLR with its projector
    fewer = Series(checkpoints, [9.0, 8.0, 6.0, 5.0])  # without: ratios 0.9, 0.4, 0.25, 0.2
    verdict = judge(trace_of(**healthy_series()), RULES, eval_rank=fewer, reference_rank=reference, reference="simclr")
    assert verdict.kind == DIMENSIONAL and verdict.mode == "fewer dimensions than simclr" and verdict.since == 100
    assert "eval RankMe < 0.5 x simclr's" in verdict.findings[0].describe()
    # the same comparison on a channel of the training traces (Barlow Twins with lambda = 0: its projector)
    rank = {"collapse__head_rankme": [15.0] * 4 + [3.0] * 16}
    reference_trace = trace_of(**healthy_series() | {"collapse__head_rankme": flat(12.0)})
    verdict = judge(
        trace_of(**healthy_series() | rank), RULES, reference="barlow-twins", reference_trace=reference_trace
    )
    assert verdict.kind == DIMENSIONAL and verdict.mode == "fewer projector dimensions than barlow-twins"
    assert verdict.since == 50
    assert (
        judge(
            trace_of(**healthy_series() | {"collapse__head_rankme": flat(9.0)}), RULES, reference_trace=reference_trace
        ).kind
        == HEALTHY
    )
    similar = Series(checkpoints, [9.0, 18.0, 20.0, 22.0])
    assert judge(trace_of(**healthy_series()), RULES, eval_rank=similar, reference_rank=reference).kind == HEALTHY


def test_complete_collapse_wins_over_dimensional():
    series = backbone_only() | {
        "collapse__backbone_std_ratio": flat(0.01),
        "collapse__backbone_rankme_ratio": flat(0.02),
    }
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == COMPLETE
    assert {f.kind for f in verdict.findings} == {COMPLETE, DIMENSIONAL}


def test_transient_dip_that_recovers_is_healthy():
    std = ramp(0.6, 0.8)
    std[8:12] = [0.05, 0.02, 0.03, 0.06]  # collapsed for a while mid-run, then recovered
    verdict = judge(trace_of(**backbone_only() | {"collapse__backbone_std_ratio": std}), RULES)
    assert verdict.kind == HEALTHY


def test_condition_must_hold_over_the_settle_window():
    std = ramp(0.6, 0.8)
    std[-1] = 0.01  # only the last of the 6 measurements in the last quarter (150..200)
    assert judge(trace_of(**backbone_only() | {"collapse__backbone_std_ratio": std}), RULES).kind == HEALTHY
    std[-5:] = [0.01] * 5  # 160..200: iteration 150 of the window still healthy
    assert judge(trace_of(**backbone_only() | {"collapse__backbone_std_ratio": std}), RULES).kind == HEALTHY
    std[-6:] = [0.01] * 6  # the whole last quarter
    verdict = judge(trace_of(**backbone_only() | {"collapse__backbone_std_ratio": std}), RULES)
    assert verdict.kind == COMPLETE and verdict.since == 150


def test_persistent_since_edge_cases():
    from dinolite.lab.traces import Series

    below = lambda v: v < 1  # noqa: E731
    assert persistent_since(Series([], []), below, 0.25) is None
    assert persistent_since(Series([100], [0.5]), below, 0.25) == 100
    assert persistent_since(Series([10, 20], [0.5, math.nan]), below, 0.25) is None  # NaN never satisfies
    # a window holding only the last point: the last point alone decides
    assert persistent_since(Series([10, 100], [5.0, 0.5]), below, 0.25) == 100


def test_thresholds_come_from_the_rules():
    series = backbone_only() | {"collapse__backbone_std_ratio": flat(0.3)}
    assert judge(trace_of(**series), RULES).kind == HEALTHY
    assert judge(trace_of(**series), VerdictRules(complete_std_ratio=0.5)).kind == COMPLETE


def test_a_run_replaces_the_matrix_thresholds_it_names():
    """seeds.yaml's I-JEPA run: its mean patch feature is healthy far below the default floors (digits
    are mostly blank patches), its no-EMA collapse lower still; the traces below follow the measured ones
    (docs/collapse.md#the-seeds-matrix-on-this-machine)."""
    run = LabRun(label="ijepa", preset="demo_ijepa", expect=HEALTHY, verdict={"complete_std_ratio": 0.015})
    rules = run_rules(RULES, run)
    assert rules.complete_std_ratio == 0.015 and rules.complete_rankme == RULES.complete_rankme
    assert RULES.complete_std_ratio == 0.1  # the matrix's rules are untouched
    healthy = {"collapse__backbone_std_ratio": flat(0.022), "collapse__backbone_rankme": flat(1.6)}
    collapsed = {"collapse__backbone_std_ratio": flat(0.01), "collapse__backbone_rankme": flat(1.6)}
    assert judge(trace_of(**healthy), RULES).kind == COMPLETE
    assert judge(trace_of(**healthy), rules).kind == HEALTHY
    assert judge(trace_of(**collapsed), rules).kind == COMPLETE


def test_diverged_and_no_data():
    verdict = judge(trace_of(**healthy_series()), RULES, diverged_at=42)
    assert verdict.kind == DIVERGED and verdict.since == 42
    series = healthy_series() | {"loss": [1.0] * 5 + [math.nan] * 15}
    verdict = judge(trace_of(**series), RULES)
    assert verdict.kind == DIVERGED and verdict.since == 60
    assert judge(RunTrace(), RULES).kind == NO_DATA
    assert judge(RunTrace.from_records([{"iteration": 10, "loss": 2.0}]), RULES).kind == NO_DATA


def test_channels_fall_back_per_method():
    # a method without a teacher logs only the student backbone and a projector
    series = {
        "collapse__student_backbone_std_ratio": flat(0.01),
        "collapse__projector_std_ratio": flat(0.7),
        "collapse__head_std_ratio": flat(0.01),
    }
    trace = trace_of(**series)
    assert trace.channel_prefix("backbone") == "collapse/student_backbone"
    assert trace.channel_prefix("projector") == "collapse/projector"  # preferred over DINO's head logits
    # with a head the backbone's std is not judged on its own (see the anisotropic-backbone test) ...
    assert judge(trace, RULES).kind == HEALTHY
    # ... without one it is the output
    verdict = judge(trace_of(collapse__student_backbone_std_ratio=flat(0.01)), RULES)
    assert verdict.kind == COMPLETE and verdict.mode == "constant backbone output"


def test_read_trace_merges_resumed_records_and_ignores_a_torn_last_line(tmp_path):
    lines = [
        {"iteration": 10, "loss": 3.0},
        {"iteration": 20, "loss": 2.5},
        {"iteration": 20, "loss": 2.0},  # resumed from iteration 10: iteration 20 logged again
        {"iteration": 20, "collapse/num_samples": 8.0, "collapse/backbone_std": 0.1},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"iteration": 30, "lo')
    trace = read_trace(tmp_path)
    assert trace.loss().iterations == [10, 20] and trace.loss().values == [3.0, 2.0]
    assert [it for it, _ in trace.collapse_records()] == [20]
    path.write_text('{"iteration": 10}\nnot json\n{"iteration": 20}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_trace(tmp_path)


def test_watchdog_replay_fires_where_the_runs_watchdog_would():
    cfg = load_config("demo")
    cfg.monitor.thresholds = [
        WatchdogThreshold("collapse/teacher_mean_entropy", min=0.3, after_iteration=20, patience=3)
    ]
    values = [2.0, 1.5, 0.2, 0.1, 0.05] + [0.01] * 15  # flagged from iteration 30 on; 3rd flag at 50
    trace = trace_of(collapse__teacher_mean_entropy=values, collapse__backbone_std_ratio=flat(0.5))
    replay = replay_watchdog(cfg, trace)
    assert replay.fired_at == 50
    assert "collapse/teacher_mean_entropy" in replay.message and "below min 0.3" in replay.message
    healthy = trace_of(collapse__teacher_mean_entropy=flat(2.0), collapse__backbone_std_ratio=flat(0.5))
    assert replay_watchdog(cfg, healthy).fired_at is None


@pytest.mark.parametrize(
    "top1, expected",
    [(64.0, BETTER), (63.5, BETTER), (63.4, ON_PAR), (60.0, ON_PAR), (59.6, ON_PAR), (59.5, WORSE), (40.0, WORSE)],
)
def test_comparison_with_the_reference_uses_the_margin_on_both_sides(top1, expected):
    """Wang et al.'s asymmetry runs: better / worse when the top-1 moves by at least the margin (here 2
    points from the reference's 61.5), on par inside it."""
    rules = VerdictRules(comparison_metric="knn", comparison_margin=2.0)
    comparison = compare({"knn": {"top1": top1}}, {"knn": {"top1": 61.5}}, rules, "base")
    assert comparison.outcome == expected
    assert comparison.delta == pytest.approx(top1 - 61.5)
    assert comparison.describe().startswith(f"knn {top1:.1f} vs 61.5 for base ({top1 - 61.5:+.1f} points, margin 2)")


def test_comparison_reads_the_chosen_metric_and_says_when_a_number_is_missing():
    run, ref = {"knn": {"top1": 50.0}, "linear": {"top1": 70.0}}, {"knn": {"top1": 60.0}, "linear": {"top1": 60.0}}
    assert compare(run, ref, VerdictRules(comparison_metric="linear"), "base").outcome == BETTER
    assert compare(run, ref, VerdictRules(comparison_metric="knn"), "base").outcome == WORSE
    for missing_run, missing_ref in ((None, ref), (run, None), ({"knn": {"top1": float("nan")}}, ref), ({}, ref)):
        comparison = compare(missing_run, missing_ref, RULES, "base")
        assert comparison.outcome == NO_DATA and comparison.delta is None
        assert "no comparison" in comparison.describe()
