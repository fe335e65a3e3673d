"""Barlow Twins: make the cross-correlation of two views' embeddings the identity.

Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", Eqs. 1-2. With
``z^A``, ``z^B`` (N, D) the embeddings of two views of the *global* batch, batch-normalised over the
batch dimension (``x_bi - mean_b x_bi``, then divided by the batch std), the cross-correlation is::

    C_ij = sum_b z^A_bi z^B_bj / ( sqrt(sum_b (z^A_bi)^2) * sqrt(sum_b (z^B_bj)^2) )
    L    = sum_i (1 - C_ii)^2  +  lambda * sum_i sum_{j != i} C_ij^2          (paper: lambda = 5e-3)

The invariance term pulls ``C_ii`` to 1, the redundancy-reduction term decorrelates the dimensions.
Dividing by the batch std cancels in ``C`` (it scales numerator and denominator of ``C_ij`` alike), so
the batch normalisation reduces to centring: only the batch mean matters, and a dimension that is
constant over the batch gets ``C_ii = 0`` (its norm is clamped at ``eps``): ``normalization="exact"``,
the default. The released code (facebookresearch/barlowtwins ``8e8d284``, ``main.py:205`` and ``:212-215``)
computes ``bn(z^A)^T bn(z^B) / N`` with a ``BatchNorm1d(affine=False)``, synchronised over the GPUs
(``main.py:89``): the biased batch variance plus BatchNorm's ``eps = 1e-5`` in the denominator::

    C_ij = sum_b z^A_bi z^B_bj / ( N * sqrt(var^A_i + eps) * sqrt(var^B_j + eps) )     (centred z)

the same matrix up to ``sqrt(var / (var + eps))`` per dimension, which shrinks ``C`` for dimensions whose
variance is not much above ``eps``: ``normalization="batchnorm"``.

Global batch: under ``torch.distributed`` the means, ``z^A^T z^B`` and the squared norms are sums over
every rank's rows (differentiable all-reduce, :func:`dinolite.distributed.autograd.all_reduce_sum_with_grad`);
every rank computes the same ``L``, and with the trainer's averaging of gradients over ranks ``W`` ranks
of ``B`` rows train exactly as one rank of ``W * B``. The (D, D) all-reduce is what the official code
does as well. Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dinolite.distributed import all_reduce_sum_with_grad, is_distributed
from dinolite.dtypes import at_least_float32_dtype


def _global_rows(n_local: int, device: torch.device) -> int:
    if not is_distributed():
        return n_local
    count = torch.tensor([n_local], dtype=torch.float64, device=device)
    dist.all_reduce(count)
    return int(count.item())


# how C is normalised (the module docstring): the exact correlation, or the release's BatchNorm
NORMALIZATIONS = ("exact", "batchnorm")
BATCHNORM_EPS = 1e-5  # nn.BatchNorm1d's default, which the released code keeps (main.py:205)


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = 1e-12, normalization: str = "exact") -> Tensor:
    """Barlow Twins' ``C`` (D, D) of two views (B_local, D) over the global batch (see module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"barlow twins: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"barlow twins: views must both be (B, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    dtype = at_least_float32_dtype(z_a.dtype)  # bf16 under autocast: fp32
    z_a, z_b = z_a.to(dtype), z_b.to(dtype)
    n = _global_rows(z_a.shape[0], z_a.device)
    if n < 2:
        raise ValueError(f"barlow twins: batch statistics need at least 2 rows in the global batch, got {n}")
    centred_a = z_a - all_reduce_sum_with_grad(z_a.sum(dim=0)) / n
    centred_b = z_b - all_reduce_sum_with_grad(z_b.sum(dim=0)) / n
    cross = all_reduce_sum_with_grad(centred_a.t() @ centred_b)
    squares_a = all_reduce_sum_with_grad(centred_a.square().sum(dim=0))
    squares_b = all_reduce_sum_with_grad(centred_b.square().sum(dim=0))
    if normalization == "batchnorm":
        std_a, std_b = (squares_a / n + BATCHNORM_EPS).sqrt(), (squares_b / n + BATCHNORM_EPS).sqrt()
        return cross / (n * std_a.unsqueeze(1) * std_b.unsqueeze(0))
    return cross / (squares_a.sqrt().unsqueeze(1) * squares_b.sqrt().unsqueeze(0)).clamp_min(eps)


class BarlowTwinsLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` (see the module docstring); no state."""

    def __init__(self, lambda_offdiag: float = 5e-3, normalization: str = "exact") -> None:
        super().__init__()
        if lambda_offdiag < 0:
            raise ValueError(f"BarlowTwinsLoss: lambda_offdiag must be >= 0, got {lambda_offdiag}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"BarlowTwinsLoss: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.lambda_offdiag = float(lambda_offdiag)
        self.normalization = normalization

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        c = cross_correlation(z_a, z_b, normalization=self.normalization)
        diagonal = torch.diagonal(c)
        on_diagonal = (1.0 - diagonal).square().sum()
        off_diagonal = c.square().sum() - diagonal.square().sum()
        return on_diagonal + self.lambda_offdiag * off_diagonal
