"""benchmarks/cpu_step_speedups.py runs end to end on the demo preset: packing leaves the FLOPs of a step
unchanged, every variant gets a row, and switching the options in place leaves the run trainable. Speed is
never asserted (timings on a shared CPU are noise)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from dinolite.config import load_config
from tests.benchmarks.test_benchmark_scripts import load_script


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_demo_run_reports_equal_flops_and_a_row_per_variant(capsys, restore_threads):
    script = load_script("cpu_step_speedups")
    argv = ["--config", "demo", "--batch-size", "4", "--rounds", "1", "--variants", "baseline", "packing", "fused"]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    per_crop, packed = re.search(r"step FLOPs \(one batch\): per crop (\d+) , packed (\d+)", out).groups()
    assert int(per_crop) == int(packed) > 0
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| [\d.]+ \| [\d., ]+ \| ([\d.]+x) \|$", out, re.M)}
    assert set(rows) == {"baseline", "packing", "fused"}
    assert rows["baseline"] == "1.00x"


def test_apply_variant_switches_packing_and_the_adamw_kernel_in_place_and_back():
    script = load_script("cpu_step_speedups")
    cfg = load_config("demo", ["train.device=cpu"])
    batches = script.synthetic_batches(cfg, 1, torch.device("cpu"), seed=0)
    run = script.build_run(cfg, script.init_distributed("gloo", "cpu"), batches=lambda _: itertools.cycle(batches))
    compiled: dict = {}
    script.apply_variant(run, {**script.VARIANTS["bf16"], "packing": True, "kernel": "fused"}, compiled)
    assert run.training_step.precision is torch.bfloat16
    assert all(block.crop_packing for block in run.objective.student["backbone"].blocks)
    assert all(group["fused"] and not group["foreach"] for group in run.optimizer.param_groups)
    assert run.step(run.next_batch()).output.loss.isfinite()
    script.apply_variant(run, script.VARIANTS["baseline"], compiled)
    assert not any(block.crop_packing for block in run.objective.teacher["backbone"].blocks)
    assert all(group["fused"] is None and group["foreach"] is None for group in run.optimizer.param_groups)
    assert run.training_step.precision is None and not compiled
