"""FSDP2 sharding: plans and fallbacks, activation checkpointing, 2-rank gloo vs 1 process (clipping:
test_clipping.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dinolite.fsdp import sharding
from dinolite.fsdp.sharding import (
    check_aligned_shards,
    enable_activation_checkpointing,
    is_sharded,
    plan_sharding,
    shard_objective,
)
from tests.train import scale_launch
from tests.train.scale_worker import build_objective, global_batch_slice, tiny_config


@pytest.mark.parametrize(
    "strategy, world, mesh, reshard",
    [
        ("full_shard", 4, (4,), True),
        ("shard_grad_op", 4, (4,), False),
        ("no_shard", 4, (4, 1), False),
        ("full_shard", 1, (), True),
    ],
)
def test_plan_strategies(strategy, world, mesh, reshard):
    plan = plan_sharding(strategy, False, False, False, "cpu", world)
    assert plan.use_fsdp == (world > 1)
    assert plan.mesh_shape == mesh and plan.reshard_after_forward == reshard


def test_hybrid_shard_meshes_nodes_by_processes_per_node():
    plan = plan_sharding("hybrid_shard", False, False, False, "cpu", 8, processes_per_node=4)
    assert plan.use_fsdp and plan.mesh_shape == (2, 4) and plan.reshard_after_forward is True
    assert plan_sharding("hybrid_shard", False, False, False, "cpu", 4).mesh_shape == (1, 4)  # one node
    with pytest.raises(ValueError, match="hybrid_shard: 4 processes do not split into nodes of 3"):
        plan_sharding("hybrid_shard", False, False, False, "cpu", 4, processes_per_node=3)


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"LOCAL_WORLD_SIZE": "2", "SLURM_NTASKS_PER_NODE": "8"}, 2),  # torchrun's own count first
        ({"SLURM_NTASKS_PER_NODE": "4"}, 4),
        ({"SLURM_NTASKS_PER_NODE": "4(x2)"}, 16),  # uneven-node syntax: not one number, fall back
        ({}, 16),
    ],
)
def test_processes_per_node_from_the_launcher(environ, expected):
    assert sharding.processes_per_node(16, environ) == expected


def test_plan_compiles_and_mixes_precision_on_cpu_too():
    plan = plan_sharding("full_shard", True, True, True, "cpu", 2)
    assert plan.compile and plan.activation_checkpointing and plan.mixed_precision and plan.notes == ()
    cuda = plan_sharding("full_shard", True, False, False, "cuda", 8)
    assert cuda.mixed_precision and cuda.notes == ()
    single = plan_sharding("full_shard", True, False, False, "cuda", 1)
    assert not single.mixed_precision and "one process" in single.notes[0]  # autocast instead


def test_plan_compiles_on_cpu_only_with_a_cxx_compiler(monkeypatch):
    monkeypatch.setattr(sharding, "find_cpu_compiler", lambda: None)
    plan = plan_sharding("full_shard", False, False, True, "cpu", 1)
    assert not plan.compile
    assert plan.notes == (
        "torch.compile on CPU needs a C++ compiler (g++, c++, clang++) and none is on PATH; running eager",
    )


def test_plan_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="sharding_strategy='zero3'"):
        plan_sharding("zero3", False, False, False, "cpu", 2)


def _loss_and_grads(objective, batch):
    torch.manual_seed(0)
    objective.zero_grad(set_to_none=True)
    loss = objective.loss_at_temperature(batch, teacher_temp=0.05).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.student.named_parameters() if p.grad is not None}


def test_single_process_checkpointing_keeps_keys_and_grads():
    torch.manual_seed(0)
    reference = build_objective(tiny_config(separate_head=False, koleo=0.1))
    reference.train()
    objective = copy.deepcopy(reference)
    keys = list(objective.state_dict())
    shard_objective(objective, "full_shard", mixed_precision=False, activation_checkpointing=True, compile=False)
    assert list(objective.state_dict()) == keys  # DINOv2 layout: no wrapper or FSDP prefixes
    assert not is_sharded(objective.student["backbone"])  # one process: nothing to shard
    batch = global_batch_slice(0, 4, 0, 1)
    ref_loss, ref_grads = _loss_and_grads(reference, batch)
    loss, grads = _loss_and_grads(objective, batch)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_activation_checkpointing_recomputes_in_backward():
    calls = []

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            calls.append(1)
            return self.lin(x).tanh()

    block = Block()
    enable_activation_checkpointing(block)
    block(torch.randn(2, 3, requires_grad=True)).sum().backward()
    assert len(calls) == 2  # forward once, then again during backward
    assert list(block.state_dict()) == ["lin.weight", "lin.bias"]


def test_check_aligned_shards_rejects_mismatch():
    student = nn.ModuleDict({"a": nn.Linear(2, 3)})
    check_aligned_shards(student, copy.deepcopy(student))
    with pytest.raises(RuntimeError, match="'a.weight' are sharded differently"):
        check_aligned_shards(student, nn.ModuleDict({"a": nn.Linear(3, 3)}))


# ------------------------------------------------------------------------------------ 2 ranks, gloo


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    return scale_launch.run(1, ["--out", str(tmp_path_factory.mktemp("ref")), "--steps", "3"])


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("full_shard", ["--activation-checkpointing"]),
        ("no_shard", []),
        ("full_shard", ["--activation-checkpointing", "--crop-packing"]),  # packed 2 ranks == per-crop 1 process
    ],
)
def test_two_ranks_match_one_process(single_process_reference, tmp_path, strategy, extra):
    """Same global batch of 8 split 4+4: losses and final weights equal one process on all 8."""
    sharded = scale_launch.run(2, ["--out", str(tmp_path), "--steps", "3", "--strategy", strategy, *extra])
    ref = single_process_reference
    torch.testing.assert_close(sharded["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    assert _max_diff(sharded["student"], ref["student"]) < 1e-5
    assert _max_diff(sharded["teacher"], ref["teacher"]) < 1e-5
    # and training did move the weights (the comparison is not between two untouched inits)
    assert ref["losses"][-1] < ref["losses"][0]


@pytest.mark.slow
def test_shard_grad_op_with_separate_ibot_head(tmp_path):
    args = ["--steps", "2", "--separate-head"]
    ref = scale_launch.run(1, ["--out", str(tmp_path / "one"), *args])
    sharded = scale_launch.run(2, ["--out", str(tmp_path / "two"), "--strategy", "shard_grad_op", *args])
    assert any(k.startswith("ibot_head.") for k in ref["teacher"])
    torch.testing.assert_close(sharded["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    assert _max_diff(sharded["teacher"], ref["teacher"]) < 1e-5


@pytest.mark.numerics
@pytest.mark.slow
def test_hsdp_on_two_torchrun_nodes_matches_one_process(single_process_reference, tmp_path):
    """2 x 2 HSDP: two torchrun launches on localhost (nodes 0 and 1, 2 processes each, one rendezvous).

    Not bitwise: one process sums the gradient over its 8 images inside each matmul, while HSDP sums 4
    partial gradients of 2 images (reduce-scatter in the node, all-reduce across nodes) in another order,
    and float32 addition is not associative. Measured gap: benchmarks/RESULTS.md ("HSDP"); the bound is
    the 2-rank tests' 1e-5.
    """
    hsdp = scale_launch.run_nodes(2, 2, ["--out", str(tmp_path), "--steps", "3", "--strategy", "hybrid_shard"])
    ref = single_process_reference
    assert hsdp["mesh_shape"] == [2, 2] and ref["mesh_shape"] == []  # (replicate=nodes, shard=per node)
    torch.testing.assert_close(hsdp["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    assert _max_diff(hsdp["student"], ref["student"]) < 1e-5
    assert _max_diff(hsdp["teacher"], ref["teacher"]) < 1e-5
    assert ref["losses"][-1] < ref["losses"][0]


def test_a_set_of_students_is_told_apart_from_one_students_modules():
    def one() -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": nn.Linear(2, 2), "dino_head": nn.Linear(2, 2)})

    students = nn.ModuleDict({"narrow": one(), "wide": one()})
    assert sharding.is_student_set(students)  # each student gets its own FSDP units (and parameter groups)
    assert all(sharding.is_student_set_member(m) for m in students.values())
    assert not sharding.is_student_set(one())  # one student: its backbone and heads
    assert not sharding.is_student_set(nn.ModuleDict())
    assert not sharding.is_student_set(nn.ModuleDict({"narrow": one(), "head": nn.Linear(2, 2)}))
