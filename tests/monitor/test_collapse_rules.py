"""One vocabulary of collapse rules: what a rule is, and that the watchdog, the visualiser's verdict and
the lab's verdict read the same rules with the same thresholds (docs/monitor.md#collapse-rules)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from dinolite.config import WatchdogThreshold
from dinolite.eval.collapse_verdict import FEATURE_RULES, collapse_report
from dinolite.lab.matrix import VerdictRules
from dinolite.lab.traces import RunTrace
from dinolite.lab.verdict import judge, verdict_rules
from dinolite.monitor import collapse_rules as cr
from dinolite.monitor.collapse_rules import CollapseRule
from dinolite.monitor.watchdog import Watchdog, as_rule
from dinolite.train.methods import get_method, list_methods


def test_a_rule_names_its_metric_condition_mode_and_kind():
    rule = cr.constant_output("predictor", after_iteration=100, patience=2)
    assert rule.metric == "collapse/predictor_std_ratio"
    assert (rule.min, rule.max, rule.after_iteration, rule.patience) == (0.1, None, 100, 2)
    assert rule.mode == cr.CONSTANT_OUTPUT and rule.kind == cr.COMPLETE
    assert rule.condition() == "std x sqrt(d) < 0.1" and rule.label() == "constant predictor output"
    assert rule.on("backbone").metric == "collapse/backbone_std_ratio"
    assert cr.one_prototype().metric == "collapse/teacher_mean_entropy_norm"
    assert cr.uniform_output().condition() == "H(teacher)/ln K > 0.98"
    assert cr.low_rank("projector").kind == cr.DIMENSIONAL and cr.low_rank("projector").label() == "low-rank projector"


def test_crossing_holds_and_divergence():
    rule = CollapseRule(cr.RANKME, min=1.5, max=50.0, channel="backbone")
    assert rule.crossing(1.2) == (cr.BELOW, 1.5)
    assert rule.crossing(60.0) == (cr.ABOVE, 50.0)
    assert rule.crossing(10.0) is None
    bound, threshold = rule.crossing(math.nan)
    assert bound == cr.NOT_FINITE and math.isnan(threshold)
    # A NaN crosses every rule (the watchdog acts on it) but is no collapse condition (it is divergence).
    assert rule.holds(1.2) and not rule.holds(10.0) and not rule.holds(math.nan) and not rule.holds(math.inf)


@pytest.mark.parametrize(
    "metric, channel, stat",
    [
        ("collapse/backbone_rankme", "backbone", "rankme"),
        ("collapse/student_backbone_rankme_ratio", "student_backbone", "rankme_ratio"),
        ("collapse/head_std_ratio", "head", "std_ratio"),
        ("collapse/predictor_std", "predictor", "std"),
        ("collapse/teacher_entropy_norm", "", "teacher_entropy_norm"),
        ("collapse/backbone_lidar", "backbone", "lidar"),
        ("collapse/student_backbone_alpha_req", "student_backbone", "alpha_req"),
        ("collapse/target_prediction_error", "", "target_prediction_error"),
    ],
)
def test_a_config_threshold_reads_into_the_rule_it_states(metric, channel, stat):
    rule = CollapseRule.from_metric(metric, min=1.0, after_iteration=7, patience=3)
    assert (rule.channel, rule.stat, rule.metric) == (channel, stat, metric)
    assert (rule.after_iteration, rule.patience) == (7, 3)


def test_a_foreign_metric_stays_whole():
    rule = as_rule(WatchdogThreshold(metric="loss/total", max=100.0))
    assert rule.metric == "loss/total" and rule.family == "" and rule.mode == ""


def test_a_config_threshold_gets_the_mode_its_statistic_and_bound_show():
    def mode(metric: str, **bounds: float) -> str:
        return as_rule(WatchdogThreshold(metric=metric, **bounds)).mode

    assert mode("collapse/predictor_std_ratio", min=0.1) == cr.CONSTANT_OUTPUT
    assert mode("collapse/backbone_rankme", min=1.5) == cr.ONE_DIRECTION
    assert mode("collapse/projector_rankme", min=6.0) == cr.LOW_RANK  # demo_simsiam's preset rule
    assert mode("collapse/backbone_rankme_ratio", min=0.02) == cr.LOW_RANK
    assert mode("collapse/teacher_mean_entropy", min=0.3) == cr.ONE_PROTOTYPE
    assert mode("collapse/teacher_entropy_norm", max=0.99) == cr.UNIFORM_OUTPUT
    assert mode("collapse/teacher_entropy_norm", min=0.1) == ""  # a floor on it shows no collapse mode
    assert mode("collapse/backbone_lidar", min=1.5) == cr.ONE_DIRECTION  # a smooth rank, as RankMe
    assert mode("collapse/backbone_lidar", min=8.0) == cr.LOW_RANK
    assert mode("collapse/backbone_alpha_req", max=3.0) == cr.LOW_RANK  # a steep spectrum
    assert mode("collapse/backbone_alpha_req", min=0.2) == ""  # a white spectrum is not a collapse


def test_lidar_and_alpha_req_rules_read_their_metrics_and_have_no_default():
    lidar_rule = cr.few_discriminative_directions("backbone", min=1.5)
    alpha_rule = cr.steep_spectrum("backbone", max=3.0)
    assert (lidar_rule.metric, lidar_rule.kind) == ("collapse/backbone_lidar", cr.COMPLETE)
    assert cr.few_discriminative_directions("backbone", min=6.0).kind == cr.DIMENSIONAL
    assert (alpha_rule.metric, alpha_rule.kind) == ("collapse/backbone_alpha_req", cr.DIMENSIONAL)
    assert lidar_rule.condition() == "LiDAR < 1.5" and alpha_rule.condition() == "alpha-ReQ > 3"
    alerts = Watchdog([lidar_rule, alpha_rule]).check(
        5, {"collapse/backbone_lidar": 1.1, "collapse/backbone_alpha_req": 2}
    )
    assert [(a.metric, a.mode) for a in alerts] == [("collapse/backbone_lidar", cr.ONE_DIRECTION)]


def test_verdict_kind_complete_wins_and_none_is_healthy():
    assert cr.verdict_kind([]) == cr.HEALTHY
    assert cr.verdict_kind([cr.low_rank("backbone")]) == cr.DIMENSIONAL
    assert cr.verdict_kind([cr.low_rank("backbone"), cr.one_prototype()]) == cr.COMPLETE


def test_settled_since_reads_a_series():
    below = cr.one_direction("backbone").holds
    iterations = [10, 20, 30, 40]
    assert cr.settled_since(iterations, [5.0, 1.2, 1.1, 1.0], below) == 20
    assert cr.settled_since(iterations, [1.0, 1.0, 1.0, 5.0], below) is None  # recovered at the end
    assert cr.settled_since([], [], below) is None


def test_the_defaults_live_in_one_place():
    """The lab's matrix defaults, the visualiser's rules and the watchdog's joint-embedding rules all
    carry the thresholds of dinolite.monitor.collapse_rules."""
    rules = VerdictRules()
    assert rules.complete_std_ratio == cr.CONSTANT_OUTPUT_STD_RATIO
    assert rules.complete_rankme == cr.ONE_DIRECTION_RANKME
    assert rules.one_prototype_entropy == cr.ONE_PROTOTYPE_ENTROPY_NORM
    assert rules.uniform_entropy == cr.UNIFORM_ENTROPY_NORM
    assert rules.dimensional_rank_ratio == cr.LOW_RANK_RANKME_RATIO
    assert rules.dimensional_reference_fraction == cr.FEWER_DIMENSIONS_FRACTION
    assert rules.settle_fraction == cr.SETTLE_FRACTION
    assert [r.min for r in FEATURE_RULES] == [
        cr.CONSTANT_OUTPUT_STD_RATIO,
        cr.ONE_DIRECTION_RANKME,
        cr.LOW_RANK_RANKME_RATIO,
    ]
    simsiam = {rule.metric: rule for rule in get_method("simsiam").watchdog_thresholds}
    assert simsiam["collapse/predictor_std_ratio"].min == cr.CONSTANT_OUTPUT_STD_RATIO
    assert simsiam["collapse/projector_rankme"].min == cr.ONE_DIRECTION_RANKME


@pytest.mark.parametrize("method", list_methods())
def test_every_method_states_its_watchdog_rules_in_the_vocabulary(method):
    for rule in get_method(method).watchdog_thresholds:
        assert isinstance(rule, CollapseRule) and rule.mode in cr.MODE_KINDS, (method, rule)
        Watchdog([rule], known_metrics=(rule.metric,))  # and the watchdog accepts it


# --- the three judges on the same embedding -----------------------------------------------------------


def _nearly_constant_features(spread: float, n: int = 200, d: int = 32) -> torch.Tensor:
    """Features around one shared direction: std x sqrt(d) of the L2-normalised rows ~= ``spread``."""
    g = torch.Generator().manual_seed(0)
    return torch.ones(n, d) + spread * torch.randn(n, d, generator=g)


def _flat_trace(metrics: dict[str, float], iterations: range = range(10, 210, 10)) -> RunTrace:
    records = [{"iteration": it, "collapse/num_samples": 64.0, **metrics} for it in iterations]
    return RunTrace.from_records(records + [{"iteration": it, "loss": 1.0} for it in iterations])


@pytest.mark.parametrize("spread, collapsed", [(0.07, True), (0.12, False)])
def test_watchdog_visualiser_and_lab_agree_on_one_embedding(spread, collapsed):
    """One embedding, measured once: the visualiser reads its features, the lab a headless run whose
    trace logs those statistics throughout, the watchdog the same statistics live; all three find (or
    none finds) the same constant-output collapse, by the same rule."""
    report = collapse_report(_nearly_constant_features(spread))
    stats = {
        "collapse/backbone_std": report.std,
        "collapse/backbone_std_ratio": report.std_ratio,
        "collapse/backbone_rankme": report.rankme,
        "collapse/backbone_rankme_ratio": report.rankme_ratio,
    }
    verdict = judge(_flat_trace(stats), VerdictRules())
    watchdog = Watchdog([cr.constant_output("backbone"), cr.one_direction("backbone"), cr.low_rank("backbone")])
    alerts = watchdog.check(100, stats)
    assert (report.verdict == cr.COMPLETE) is collapsed
    assert (verdict.kind == cr.COMPLETE) is collapsed
    assert ([a.mode for a in alerts] == [cr.CONSTANT_OUTPUT]) is collapsed
    if collapsed:
        assert report.findings == ["constant backbone output: std x sqrt(d) < 0.1"]
        assert verdict.mode == "constant backbone output"
    else:
        assert report.verdict == verdict.kind == cr.HEALTHY and alerts == []


def test_the_visualiser_now_reads_constant_output_at_the_shared_threshold():
    """What changed: the visualiser called features constant only below std x sqrt(d) 0.05, the lab and
    the joint-embedding watchdog below 0.1. One threshold now, 0.1 (docs/monitor.md#collapse-rules says
    why): features at 0.07 with RankMe well above 1.5, "healthy" before, are a complete collapse."""
    report = collapse_report(_nearly_constant_features(0.07))
    assert 0.05 < report.std_ratio < 0.1 and report.rankme > 1.5
    assert report.rankme_ratio > cr.LOW_RANK_RANKME_RATIO  # neither of the other rules holds
    assert report.verdict == cr.COMPLETE
    assert report.to_dict()["rules"][cr.COMPLETE] == "std_ratio < 0.1 or rankme < 1.5"


def test_the_lab_reads_the_rules_of_its_thresholds_on_the_output_channels():
    rules = verdict_rules(VerdictRules(complete_std_ratio=0.015), ["projector", "predictor"])
    assert [(r.mode, r.channel, r.min, r.max) for r in rules] == [
        (cr.CONSTANT_OUTPUT, "projector", 0.015, None),
        (cr.CONSTANT_OUTPUT, "predictor", 0.015, None),
        (cr.ONE_DIRECTION, "projector", 1.5, None),
        (cr.ONE_DIRECTION, "predictor", 1.5, None),
        (cr.ONE_PROTOTYPE, "", 0.1, None),
        (cr.UNIFORM_OUTPUT, "", None, 0.98),
        (cr.LOW_RANK, "projector", 0.05, None),
        (cr.LOW_RANK, "predictor", 0.05, None),
    ]


# --- one place to change a rule -----------------------------------------------------------------------

# Run in a fresh interpreter: dinolite.monitor.collapse_rules is loaded from its own file with one line
# edited (the line given), before anything imports it; then each judge reads features / statistics whose
# std x sqrt(d) lies between the old and the new threshold. Prints the three findings as JSON.
_JUDGES_SCRIPT = r"""
import importlib.abc, importlib.util, json, sys
from pathlib import Path

import dinolite

PATH = Path(dinolite.__file__).parent / "monitor" / "collapse_rules.py"
OLD, NEW, SPREAD = sys.argv[1], sys.argv[2], float(sys.argv[3])


class EditedRules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != "dinolite.monitor.collapse_rules":
            return None
        return importlib.util.spec_from_file_location(name, PATH, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source = PATH.read_text()
        if source.count(OLD) != 1:
            raise SystemExit(f"{PATH}: {OLD!r} is not one line of the file")
        exec(compile(source.replace(OLD, NEW), str(PATH), "exec"), module.__dict__)


sys.meta_path.insert(0, EditedRules())

import torch

from dinolite.eval.collapse_verdict import collapse_report
from dinolite.lab.matrix import VerdictRules
from dinolite.lab.traces import RunTrace
from dinolite.lab.verdict import judge
from dinolite.monitor.watchdog import Watchdog
from dinolite.train.methods import get_method

features = torch.ones(200, 32) + SPREAD * torch.randn(200, 32, generator=torch.Generator().manual_seed(0))
report = collapse_report(features)
stats = {"std": report.std, "std_ratio": report.std_ratio, "rankme": report.rankme,
         "rankme_ratio": report.rankme_ratio}
# the lab: a headless run whose trace logs these statistics throughout
records = [{"iteration": it, "collapse/num_samples": 64.0, "loss": 1.0,
            **{f"collapse/backbone_{k}": v for k, v in stats.items()}} for it in range(10, 210, 10)]
verdict = judge(RunTrace.from_records(records), VerdictRules())
# the watchdog: SimSiam's own rules, its predictor output measured with these statistics
rules = get_method("simsiam").watchdog_thresholds
live = {f"collapse/predictor_{k}": v for k, v in stats.items()} | {"collapse/projector_rankme": 50.0}
watchdog = Watchdog(rules, known_metrics=[rule.metric for rule in rules])
alerts = [a.mode for it in range(100, 300, 10) for a in watchdog.check(it, live)]
print(json.dumps({"std_ratio": report.std_ratio, "visualiser": report.verdict, "lab": verdict.kind,
                  "watchdog": sorted(set(alerts))}))
"""


def _three_judges(old: str, new: str, spread: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _JUDGES_SCRIPT, old, new, str(spread)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh interpreters importing torch
def test_a_threshold_changed_in_collapse_rules_changes_all_three_judges():
    """The default constant-output threshold is one line of dinolite/monitor/collapse_rules.py: raised
    from 0.1 to 0.2 there (and nowhere else), an embedding at std x sqrt(d) ~0.15, healthy to all three
    judges before, is a constant-output collapse to the visualiser, the lab and SimSiam's watchdog."""
    line = f"CONSTANT_OUTPUT_STD_RATIO = {cr.CONSTANT_OUTPUT_STD_RATIO}"
    as_is = _three_judges(line, line, 0.15)
    edited = _three_judges(line, "CONSTANT_OUTPUT_STD_RATIO = 0.2", 0.15)
    assert 0.1 < as_is["std_ratio"] == edited["std_ratio"] < 0.2
    assert (as_is["visualiser"], as_is["lab"], as_is["watchdog"]) == (cr.HEALTHY, cr.HEALTHY, [])
    assert (edited["visualiser"], edited["lab"], edited["watchdog"]) == (cr.COMPLETE, cr.COMPLETE, [cr.CONSTANT_OUTPUT])
