"""Differentiable collectives: forward gathers / sums over ranks, backward is the adjoint over all ranks'
losses (each rank's input gets the gradient of the sum of every rank's loss); identities on one process."""

from __future__ import annotations

import torch

from dinolite.distributed.autograd import all_gather_with_grad, all_reduce_sum_with_grad
from tests.gloo_ranks import run_on_ranks


def test_one_process_both_are_the_identity_with_its_gradient():
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    assert all_gather_with_grad(x) is x and all_reduce_sum_with_grad(x) is x


def _rank_input(rank: int) -> torch.Tensor:
    return torch.tensor([[rank + 1.0, 2.0 * (rank + 1)]], requires_grad=True)


def _on_rank(rank: int, world: int) -> dict:
    weight = float(rank + 1)  # each rank's loss weighs the shared result differently
    x = _rank_input(rank)
    gathered = all_gather_with_grad(x)
    (gathered * weight).sum().backward()
    y = _rank_input(rank)
    summed = all_reduce_sum_with_grad(y)
    (summed * weight).sum().backward()
    return {
        "gathered": gathered.tolist(),
        "gather_grad": x.grad.tolist(),
        "summed": summed.tolist(),
        "sum_grad": y.grad.tolist(),
    }


def test_two_ranks_gather_and_sum_and_send_every_ranks_gradient_back(tmp_path):
    results = run_on_ranks(_on_rank, 2, tmp_path)
    total_weight = 1.0 + 2.0  # d(sum_s weight_s * sum(result)) / d x_r
    for result in results:
        assert result["gathered"] == [[1.0, 2.0], [2.0, 4.0]]  # rank order
        assert result["summed"] == [[3.0, 6.0]]
        assert result["gather_grad"] == [[total_weight, total_weight]]
        assert result["sum_grad"] == [[total_weight, total_weight]]
