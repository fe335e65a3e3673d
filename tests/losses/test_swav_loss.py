"""SwAV's swapped prediction loss (dinolite/losses/swav_loss.py): hand-computed codes and loss, the queue's rows
in the Sinkhorn, and 2 processes with B rows each equal to 1 process with 2B rows (the codes are the global
batch's)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinolite.losses import SwAVLoss


def reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The paper's Sinkhorn-Knopp, written out in float64 on one process (rows = samples)."""
    q = torch.exp(scores.double() / epsilon).t()  # K x B
    n_prototypes, n_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / n_prototypes
        q = q / q.sum(dim=0, keepdim=True) / n_samples
    return (q * n_samples).t()


def test_codes_by_hand_for_two_samples_and_two_prototypes():
    """One iteration on S = [[1, 0], [0, 1]] / 1 at eps 1: exp(S) is symmetric, so every row and column
    normalisation keeps it symmetric and the codes are exp(S) with unit rows: (e, 1) / (e + 1)."""
    loss = SwAVLoss(temperature=0.1, epsilon=1.0, sinkhorn_iterations=1)
    codes = loss.codes(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    e = math.e
    torch.testing.assert_close(codes, torch.tensor([[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]]))


def test_codes_balance_the_prototypes_where_a_softmax_does_not():
    """Every sample prefers prototype 0; the Sinkhorn codes still give each prototype B / K of the mass."""
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.7, 0.3, 0.1], [0.95, 0.2, 0.05]])
    loss = SwAVLoss(epsilon=0.05, sinkhorn_iterations=50)
    codes = loss.codes(scores)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((3,), 4 / 3), atol=1e-4, rtol=0)
    assert torch.softmax(scores / 0.05, dim=1).sum(dim=0)[0] > 3.9  # the softmax puts ~all on prototype 0
    torch.testing.assert_close(SwAVLoss().codes(scores), reference_sinkhorn(scores, 0.05, 3).float())


def test_loss_by_hand_two_crops():
    """Two crops, codes of both: loss = 1/2 [CE(q_0, s_1) + CE(q_1, s_0)], CE(q, s) = mean_b - q . log softmax(s / tau)."""
    g = torch.Generator().manual_seed(0)
    s0, s1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss = SwAVLoss(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3)
    out = loss([s0, s1])
    q0, q1 = reference_sinkhorn(s0, 0.05, 3), reference_sinkhorn(s1, 0.05, 3)

    def ce(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(q * torch.log_softmax(s.double() / 0.1, dim=1)).sum(dim=1).mean()

    expected = (ce(q0, s1) + ce(q1, s0)) / 2
    torch.testing.assert_close(out["loss"].double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["codes"].double(), torch.stack([q0, q1]), rtol=1e-5, atol=1e-6)


def test_multi_crop_codes_come_from_the_large_crops_and_every_other_crop_predicts_them():
    g = torch.Generator().manual_seed(1)
    scores = [torch.randn(3, 6, generator=g, requires_grad=True) for _ in range(4)]
    loss = SwAVLoss()
    out = loss(scores)
    codes = [reference_sinkhorn(scores[a].detach(), 0.05, 3) for a in (0, 1)]
    terms = []
    for a in (0, 1):
        others = [v for v in range(4) if v != a]
        terms.append(sum(loss.cross_entropy(codes[a].float(), scores[v]) for v in others) / 3)
    torch.testing.assert_close(out["loss"], (terms[0] + terms[1]) / 2)
    out["loss"].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scores)  # small crops are predictors


def test_the_queue_joins_the_sinkhorn_but_only_the_batch_gets_codes():
    g = torch.Generator().manual_seed(2)
    queue, batch = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g)
    loss = SwAVLoss()
    codes = loss.codes(batch, queue)
    assert codes.shape == (2, 5)
    torch.testing.assert_close(codes, reference_sinkhorn(torch.cat([queue, batch]), 0.05, 3)[-2:].float())
    assert not torch.allclose(codes, loss.codes(batch))


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"epsilon": -1.0}, {"sinkhorn_iterations": 0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="SwAVLoss"):
        SwAVLoss(**kwargs)


# ---------------------------------------------------------------------------------------------- 2 processes

B_PER_RANK, K, CROPS, QUEUE_PER_RANK = 3, 5, 4, 4


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(CROPS, 2 * B_PER_RANK, K, generator=g), torch.randn(2, 2 * QUEUE_PER_RANK, K, generator=g)


def _run(scores: torch.Tensor, queue: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = [s.clone().requires_grad_(True) for s in scores]
    out = SwAVLoss()(leaves, (0, 1), list(queue))
    out["loss"].backward()
    return {"loss": out["loss"].detach(), "codes": out["codes"], "grad": torch.stack([s.grad for s in leaves])}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        scores, queue = _data()
        rows, queued = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK), slice(rank * 4, (rank + 1) * 4)
        torch.save(_run(scores[:, rows], queue[:, queued]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path: Path):
    """Each rank: half the batch and half the queue. The codes are the one-process codes of the whole batch
    (Sinkhorn sums all-reduced); the ranks' mean loss and gradients are the one-process ones."""
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    scores, queue = _data()
    # one process: rank 0's queue rows, rank 1's, then the batch; the codes keep only the batch rows, which
    # are ordered as rank 0's then rank 1's, as on two ranks
    reference = _run(scores, queue)
    torch.testing.assert_close(torch.cat([r["codes"] for r in ranks], dim=1), reference["codes"])
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, reference["loss"])
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks], dim=1) / 2, reference["grad"])
