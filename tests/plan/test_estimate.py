"""From a step's cost to a prediction (dinolite/plan/estimate.py): the time model, fit and advice."""

from __future__ import annotations

import pytest
import torch

from dinolite.plan.estimate import collective_times, largest_batch, predict
from dinolite.plan.fake_step import StepCost
from dinolite.plan.hardware import get_gpu
from dinolite.plan.measure import Collective

GIB = 2**30


def _cost(activations: int = 10 * GIB, collectives=(), flops: int = 10**15, batch: int = 10) -> StepCost:
    split = {"parameters": GIB, "gradients": GIB, "optimizer state": 2 * GIB, "activations": activations}
    return StepCost(
        world_size=16,
        processes_per_node=8,
        batch_size_per_gpu=batch,
        peak_bytes=sum(split.values()),
        by_category=split,
        flops=flops,
        flops_by_op={},
        collectives=list(collectives),
        sharding=None,
        precision=torch.bfloat16,
        host_defaults={},
        seconds=0.0,
    )


def test_compute_time_is_flops_over_peak_times_efficiency():
    p = predict(_cost(flops=312 * 10**12), get_gpu("a100-80gb"), efficiency=0.5)
    assert p.compute_s == pytest.approx(2.0)
    assert p.step_s == pytest.approx(2.0)  # no collectives
    assert p.mfu == pytest.approx(0.5)
    assert p.images_per_s_per_gpu == pytest.approx(5.0) and p.images_per_s == pytest.approx(80.0)


def test_ring_traffic_and_links_follow_the_group():
    inside = Collective("all_gather", tuple(range(8)), calls=3, buffer_bytes=8 * 10**9)
    across = Collective("all_reduce", (0, 8), calls=1, buffer_bytes=10**9)
    rows = collective_times(_cost(collectives=[inside, across]), get_gpu("h100"))
    assert rows[0].crosses_nodes is False and rows[0].wire_bytes == 7 * 10**9
    assert rows[0].seconds == pytest.approx(7e9 / 450e9)  # NVLink, one direction
    assert rows[1].crosses_nodes is True and rows[1].wire_bytes == 10**9  # 2 (n-1)/n with n = 2
    assert rows[1].seconds == pytest.approx(1e9 / 50e9)  # NDR 400 Gb/s per GPU


def test_overlap_takes_the_longer_of_compute_and_communication():
    big = Collective("all_gather", (0, 8), calls=1, buffer_bytes=200 * 10**9)  # 100 GB sent: 4 s at 25 GB/s
    p = predict(_cost(flops=312 * 10**12, collectives=[big]), get_gpu("a100-80gb"))
    assert p.comm_s == pytest.approx(4.0) and p.step_s == pytest.approx(4.0)
    assert p.no_overlap_s == pytest.approx(6.0)
    assert any("communication-bound" in line for line in p.advice)


def test_a_run_that_does_not_fit_gets_a_batch_that_does():
    cost = _cost(activations=60 * GIB, batch=12)  # 64 GiB, fixed part 4 GiB, 5 GiB per image
    p = predict(cost, get_gpu("a100-40gb"), usable=0.9)  # 36 GiB usable
    assert not p.fits
    assert largest_batch(cost, p.usable_bytes) == 6  # (36 - 4) / 5
    assert any("train.batch_size_per_gpu=6" in line for line in p.advice)
    assert any("activation_checkpointing=true" in line for line in p.advice)
    assert predict(cost, get_gpu("h200")).fits


def test_no_shard_that_does_not_fit_is_told_to_shard():
    p = predict(_cost(activations=60 * GIB), get_gpu("a100-40gb"), strategy="no_shard")
    assert any("sharding_strategy=full_shard" in line for line in p.advice)
