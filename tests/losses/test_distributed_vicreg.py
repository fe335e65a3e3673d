"""VICReg's global-batch statistics: 2 gloo processes with B rows each train exactly as 1 process with 2B
rows (loss on every rank, averaged parameter gradients, the expander's global BatchNorm), as the released
code's all-gather of the embeddings intends.

Each rank back-propagates its own loss and the parameter gradients are then averaged over ranks, as the
trainer's FSDP2 gradient reduction does; that average must equal the one-process gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dinolite.losses.vicreg_loss import VICRegLoss
from dinolite.models import ProjectionMLP
from tests.gloo_ranks import run_on_ranks

WORLD = 2
B, D_IN = 4, 6


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(WORLD * B, D_IN, generator=g, dtype=torch.float64)
    return x_a, x_a + 0.5 * torch.randn(WORLD * B, D_IN, generator=g, dtype=torch.float64)


def _step(x_a: torch.Tensor, x_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward/backward of an expander (Linear-BN-ReLU x2, Linear: the release's shape) and VICReg on this
    process's rows; parameter gradients are NOT averaged here."""
    torch.manual_seed(1)
    expander = ProjectionMLP(D_IN, 8, 5, num_layers=3).double()
    loss_fn = VICRegLoss(25.0, 25.0, 1.0)
    z_a, z_b = expander(x_a), expander(x_b)
    terms = loss_fn.terms(z_a, z_b)
    loss = sum(terms.values())
    loss.backward()
    out = {"loss": loss.detach(), "embedding": z_a.detach()}
    out.update({f"term/{name}": value.detach() for name, value in terms.items()})
    out.update({f"grad/{name}": p.grad.detach().clone() for name, p in expander.named_parameters()})
    out.update({f"buffer/{name}": b.detach().clone() for name, b in expander.named_buffers()})
    return out


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    x_a, x_b = _data()
    rows = slice(rank * B, (rank + 1) * B)
    out = _step(x_a[rows], x_b[rows])
    for key, value in out.items():
        if key.startswith("grad/"):  # what FSDP2's gradient reduction does: the mean over ranks
            dist.all_reduce(value)
            value /= world
    return out


@pytest.mark.numerics
def test_two_processes_equal_one_process(tmp_path: Path):
    ranks = run_on_ranks(_on_rank, WORLD, tmp_path)
    reference = _step(*_data())
    assert reference["term/variance"] > 0 and reference["term/covariance"] > 0  # every term is exercised
    for key, value in reference.items():
        if key == "embedding":  # global BatchNorm: rank r's rows are rows r*B..(r+1)*B of one process
            torch.testing.assert_close(torch.cat([r[key] for r in ranks]), value)
            continue
        for r in ranks:  # every rank: the global loss and terms, the one-process gradients and statistics
            torch.testing.assert_close(r[key], value, msg=lambda m, k=key: f"{k}: {m}")
