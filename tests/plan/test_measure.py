"""Accounting a step (dinolite/plan/measure.py): storages by category and peak, FLOPs, collectives."""

from __future__ import annotations

import torch
from torch import nn

from dinolite.plan.measure import CATEGORY_ORDER, MemoryAccount, StepAccount, _buffer_bytes, _kind

MIB = 2**20


def test_forward_storages_are_activations_and_backward_ones_temporaries():
    layer = nn.Linear(256, 256, bias=False)
    x = torch.randn(1024, 256, requires_grad=True)  # 1 MiB
    account = StepAccount()
    account.memory.adopt(layer.parameters(), "parameters")
    account.memory.adopt([x], "inputs")
    with account.tracking():
        y = layer(x)  # 1 MiB, saved for the backward of square
        loss = y.square().sum()  # y.square(): 1 MiB, freed at once (sum's backward needs no input)
        loss.backward()
        account.memory.label_gradients(layer.parameters())
    peak, split = account.memory.peak()
    assert split["parameters"] == 256 * 256 * 4
    assert split["inputs"] == 1 * MIB
    assert MIB <= split["activations"] < 2 * MIB
    assert peak == sum(split.values())
    assert set(split) == set(CATEGORY_ORDER)


def test_a_freed_storage_leaves_the_peak_where_it_was():
    account = StepAccount()
    with account.tracking():
        for _ in range(3):
            block = torch.empty(MIB // 4)  # 1 MiB each, freed before the next
            del block
    peak, split = account.memory.peak()
    assert peak == MIB and split["activations"] == MIB


def test_a_gradient_born_in_backward_is_relabelled_for_its_whole_life():
    memory = MemoryAccount()
    grad = torch.empty(1024)
    memory.phase = "temporary"
    memory.see(grad)
    param = nn.Parameter(torch.empty(1024))
    param.grad = grad
    memory.label_gradients([param])
    _, split = memory.peak()
    assert split["gradients"] == 4096 and split["temporary"] == 0


def test_a_storage_freed_on_another_thread_is_reported_as_late_at_the_peak():
    """What gloo's worker thread does to a finished collective's buffer: the last reference goes away
    there, so the death's op count depends on thread timing; the account says how much of the peak that is."""
    import threading

    account = StepAccount()
    with account.tracking():
        held = [torch.empty(MIB // 4)]  # 1 MiB, the buffer
        worker = threading.Thread(target=held.clear)
        torch.empty(MIB // 8)  # 0.5 MiB while the buffer lives: the peak
        worker.start()
        worker.join()
    assert account.memory.peak()[0] == MIB + MIB // 2
    assert account.memory.late_bytes_at_peak() == MIB


def test_a_storage_freed_on_the_steps_thread_is_never_late():
    account = StepAccount()
    with account.tracking():
        block = torch.empty(MIB // 4)
        torch.empty(MIB // 8)
        del block
    assert account.memory.late_bytes_at_peak() == 0


def test_matmul_flops_are_two_m_n_k_forward_and_twice_that_backward():
    a = torch.randn(32, 64, requires_grad=True)
    b = torch.randn(64, 16, requires_grad=True)
    account = StepAccount()
    with account.tracking():
        (a @ b).sum().backward()
    forward = 2 * 32 * 64 * 16
    assert account.flops == 3 * forward


def test_collective_kinds_and_buffer_sizes():
    assert _kind("_allgather_base_") == "all_gather"
    assert _kind("_reduce_scatter_base_") == "reduce_scatter"
    assert _kind("allreduce_") == "all_reduce"
    assert _kind("all_gather_into_tensor") == "all_gather"
    assert _kind("send") is None
    # eager all-gather over 4 ranks: output (full, 4 s) and input (shard, s) are both arguments
    assert _buffer_bytes("all_gather", "c10d", [], inputs=5 * 100, outputs=0, group=4) == 400
    assert _buffer_bytes("all_reduce", "c10d", [], inputs=100, outputs=0, group=4) == 100
    assert _buffer_bytes("all_gather", "_c10d_functional", [], inputs=100, outputs=400, group=4) == 400
