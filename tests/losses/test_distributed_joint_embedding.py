"""2 gloo processes with B rows each train exactly as 1 process with 2B rows, for every cross-rank
statistic of the joint-embedding methods: InfoNCE's global negatives (SimCLR, DirectCLR, both and
cross-view; MoCo v3's gathered momentum keys), Barlow Twins' global cross-correlation (exact and
BatchNorm-normalised), SIGReg's global characteristic function (LeJEPA, whose prediction term is a per-rank
mean), and the projector's global BatchNorm (outputs, gradients, running statistics).

Each rank back-propagates its own loss and the parameter gradients are then averaged over ranks, as the
trainer's FSDP2 gradient reduction does; that average must equal the one-process gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dinolite.distributed.autograd import all_gather_with_grad, all_reduce_sum_with_grad
from dinolite.losses import BarlowTwinsLoss, DirectCLRLoss, InfoNCELoss, MoCoV3Loss
from dinolite.losses.lejepa_loss import LeJEPALoss
from dinolite.losses.sigreg_loss import SIGRegLoss, slice_directions
from dinolite.models import ProjectionMLP
from tests.gloo_ranks import run_on_ranks

WORLD = 2
B, D_IN = 4, 6


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * B, D_IN, generator=g, dtype=torch.float64), torch.randn(
        WORLD * B, D_IN, generator=g, dtype=torch.float64
    )


def _model() -> nn.Module:
    torch.manual_seed(1)
    # a projector with hidden and output BatchNorm, so every global statistic is exercised
    return ProjectionMLP(D_IN, 8, 5, num_layers=3, last_batch_norm=True, last_batch_norm_affine=True).double()


def _step(x_a: torch.Tensor, x_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward/backward per loss on this process's rows; parameter gradients are NOT averaged here."""
    out: dict[str, torch.Tensor] = {}
    losses = {
        "info_nce": InfoNCELoss(temperature=0.3),
        "directclr": DirectCLRLoss(d0=3, temperature=0.3),
        "directclr_cross_view": DirectCLRLoss(d0=3, temperature=0.3, negatives="cross_view"),
        "barlow_twins": BarlowTwinsLoss(lambda_offdiag=0.1),
        "barlow_twins_batchnorm": BarlowTwinsLoss(lambda_offdiag=0.1, normalization="batchnorm"),
        # queries = the projections, keys = gradient-free other rows (a momentum encoder's stand-in)
        "moco_v3": lambda a, b: MoCoV3Loss(temperature=0.3)(a, b, a.detach().roll(1, 1), b.detach().flip(1)),
        # LeJEPA: SIGReg's characteristic function over the global batch (view 0 the global view)
        "sigreg": lambda a, b: SIGRegLoss()(torch.stack([a, b]), slice_directions(5, 7, seed=3)),
        "lejepa": lambda a, b: LeJEPALoss(0.3)(torch.stack([a, b]), 1, slice_directions(5, 7, seed=3)),
    }
    for name, loss_fn in losses.items():
        model = _model()
        z_a, z_b = model(x_a), model(x_b)
        loss = loss_fn(z_a, z_b)
        loss.backward()
        out[f"{name}/loss"] = loss.detach()
        out[f"{name}/projection"] = z_a.detach()
        for pname, param in model.named_parameters():
            out[f"{name}/grad/{pname}"] = param.grad.detach().clone()
        for bname, buf in model.named_buffers():
            out[f"{name}/buffer/{bname}"] = buf.detach().clone()
    return out


def _collective_loss(
    x_local: torch.Tensor, x_all_gathered: torch.Tensor, x_sum: torch.Tensor, rank: int
) -> torch.Tensor:
    """A rank-dependent loss of the gathered rows and of the summed rows (so the ranks' gradients differ)."""
    row_weights = torch.arange(x_all_gathered.numel(), dtype=torch.float64).reshape(x_all_gathered.shape) + rank
    return (row_weights * x_all_gathered).sum() * (1 + rank) + x_sum.square().sum() * (2 + rank) + x_local.sum()


def _collectives_grad_on_rank(x_local: torch.Tensor, rank: int) -> torch.Tensor:
    x = x_local.clone().requires_grad_(True)
    _collective_loss(x, all_gather_with_grad(x), all_reduce_sum_with_grad(x.sum(0)), rank).backward()
    return x.grad


def _collectives_reference() -> torch.Tensor:
    """d/dx of sum over ranks r of loss_r, written out on one process holding every row."""
    x = _data()[0].clone().requires_grad_(True)
    total = sum(_collective_loss(x[r * B : (r + 1) * B], x, x.sum(0), r) for r in range(WORLD))
    total.backward()
    return x.grad


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    x_a, x_b = _data()
    rows = slice(rank * B, (rank + 1) * B)
    out = _step(x_a[rows], x_b[rows])
    out["collectives/grad"] = _collectives_grad_on_rank(x_a[rows], rank)
    for key, value in out.items():
        if "/grad/" in key:  # what FSDP2's gradient reduction does: the mean over ranks
            dist.all_reduce(value)
            value /= world
    return out


@pytest.mark.numerics
def test_two_processes_equal_one_process(tmp_path: Path):
    ranks = run_on_ranks(_on_rank, WORLD, tmp_path)
    reference = _step(*_data())

    for name in ("info_nce", "directclr", "directclr_cross_view", "moco_v3", "lejepa"):
        # each rank averages over its own anchors: the mean of the rank losses is the global loss
        torch.testing.assert_close(sum(r[f"{name}/loss"] for r in ranks) / WORLD, reference[f"{name}/loss"])
    # Barlow Twins: every rank computes the same global loss
    for r in ranks:
        for name in ("barlow_twins", "barlow_twins_batchnorm", "sigreg"):
            torch.testing.assert_close(r[f"{name}/loss"], reference[f"{name}/loss"])
    for key, value in reference.items():
        if "/grad/" in key or "/buffer/" in key:
            for r in ranks:  # averaged gradients and the running statistics are the same on every rank
                torch.testing.assert_close(r[key], value, msg=lambda m, k=key: f"{k}: {m}")
        if key.endswith("/projection"):  # global BatchNorm: rank r's outputs are rows r*B..(r+1)*B of one process
            torch.testing.assert_close(torch.cat([r[key] for r in ranks]), value)
    # the collectives' backward is the adjoint of all ranks' losses: rank r gets rows r of d(sum_r loss_r)/dx
    torch.testing.assert_close(torch.cat([r["collectives/grad"] for r in ranks]), _collectives_reference())
