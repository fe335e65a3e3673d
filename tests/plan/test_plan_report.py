"""The planner's work and its printed plan (dinolite/plan/report.py)."""

from __future__ import annotations

import pytest

import dinolite.train.methods  # noqa: F401
from dinolite.config import load_config
from dinolite.plan.hardware import get_gpu
from dinolite.plan.measure import CATEGORY_ORDER
from dinolite.plan.report import format_plan, make_plan, planned_config, synthetic_batch


def test_the_planned_config_is_what_a_gpu_runs():
    cfg, notes = planned_config(load_config("demo", ["distributed.compile=true"]))
    assert cfg.train.compute_precision == "bf16" and not cfg.distributed.compile
    assert len(notes) == 2
    kept, none = planned_config(load_config("demo", ["train.compute_precision=fp32"]))
    assert kept.train.compute_precision == "fp32" and none == ()


def test_the_batch_is_the_methods_own_collate():
    cfg = load_config("demo", ["train.batch_size_per_gpu=3"])
    batch = synthetic_batch(cfg)
    assert batch["collated_global_crops"].shape[0] == 2 * 3
    assert batch["collated_local_crops"].shape[0] == cfg.crops.local_crops_number * 3


@pytest.mark.slow
def test_a_plan_prints_every_category_the_collectives_and_the_prediction():
    cfg = load_config("demo", ["train.batch_size_per_gpu=4", "distributed.sharding_strategy=hybrid_shard"])
    plan = make_plan(cfg, "demo", 2, 2, get_gpu("h100"), efficiency=0.5, usable=0.9)
    text = format_plan(plan, verbose=True)
    for name in CATEGORY_ORDER:
        assert name in text
    assert "4 GPUs" in text and "FITS" in text and "mesh 2x2" in text
    assert "all_gather" in text and "across nodes" in text and "in a node" in text
    assert "FLOPs per image" in text and "MFU" in text and "datasheet" in text
    assert plan.cost.world_size == 4 and plan.prediction.fits


def test_a_layout_without_gpus_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        make_plan(load_config("demo"), "demo", 0, 8, get_gpu("h100"), efficiency=0.5, usable=0.9)
