"""VICReg: invariance between two views, and a variance and a covariance term that keep each view's
embedding from collapsing.

Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning" (ICLR), Sec. 3. With ``Z``, ``Z'`` (n, d) the embeddings of two views of the *global* batch,
``z_j`` a column of ``Z`` (one dimension over the batch) and ``Z-bar`` its mean::

    s(Z, Z')  = 1 / (n d) * sum_i ||z_i - z'_i||^2                      invariance (mean squared error)
    v(Z)      = 1/d * sum_j max(0, gamma - sqrt(Var(z_j) + eps))          variance hinge, gamma = 1, eps = 1e-4
    C(Z)      = 1/(n-1) * sum_i (z_i - Z-bar)(z_i - Z-bar)^T             covariance (d, d)
    c(Z)      = 1/d * sum_{j != k} C(Z)_jk^2                             covariance term
    L         = lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))

with ``lambda = mu = 25``, ``nu = 1`` (the paper's and the release's defaults) and ``Var`` the unbiased
variance. The factors follow the released code (facebookresearch/vicreg, ``main_vicreg.py``), for which
the weights were tuned: its invariance is ``F.mse_loss`` (the paper's ``s`` divided by ``d``) and it halves
the sum of the two variance terms (the paper's Eq. 6 adds them); the covariance terms are summed, as in
the paper. The variance term keeps every dimension's standard deviation at 1 or above (no complete
collapse), the covariance term decorrelates the dimensions (no dimensional collapse).

Global batch: as the release (``FullGatherLayer``), both views' embeddings are all-gathered across ranks
with gradients flowing back to the rank that computed them
(:func:`dinolite.distributed.autograd.all_gather_with_grad`); the variance and the covariance are then
statistics of the global batch. The release computes the invariance on each rank's own rows before the
gather; the mean of those over ranks is the global mean squared error and their gradients agree after the
trainer averages gradients over ranks, so here it is computed on the gathered rows too and every rank
returns the same, global, loss: ``W`` ranks of ``B`` rows train exactly as one rank of ``W * B`` (every
rank must hold the same ``B``). Computed in fp32 (float64 stays float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import all_gather_with_grad
from dinolite.dtypes import at_least_float32_dtype

TERMS = ("invariance", "variance", "covariance")


def _off_diagonal_squares(cov: Tensor) -> Tensor:
    """``sum_{j != k} cov_jk^2`` (the diagonal masked out, not subtracted: no cancellation)."""
    return (cov - torch.diag_embed(torch.diagonal(cov))).square().sum()


def variance_term(z: Tensor, eps: float = 1e-4, target_std: float = 1.0) -> Tensor:
    """``v(Z)``: the mean over dimensions of ``max(0, target_std - sqrt(Var(z_j) + eps))``; ``z`` (n, d)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(target_std - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """``c(Z)``: the squared off-diagonal covariances of ``z`` (n, d), summed, divided by ``d``."""
    centred = z - z.mean(dim=0)
    cov = centred.t() @ centred / (z.shape[0] - 1)
    return _off_diagonal_squares(cov) / z.shape[1]


class VICRegLoss(nn.Module):
    """``lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))`` (see the module docstring); no state.

    Args:
        invariance_weight, variance_weight, covariance_weight: ``lambda``, ``mu``, ``nu`` (25, 25, 1).
        eps: added to the variance under the square root (1e-4).
        target_std: ``gamma``, the standard deviation the hinge asks of every dimension (1).
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        eps: float = 1e-4,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        weights = {"invariance": invariance_weight, "variance": variance_weight, "covariance": covariance_weight}
        for name, weight in weights.items():
            if not weight >= 0:
                raise ValueError(f"VICRegLoss: {name}_weight must be >= 0, got {weight}")
        if not eps > 0 or not target_std > 0:
            raise ValueError(f"VICRegLoss: eps and target_std must be > 0, got {eps} and {target_std}")
        self.weights = {name: float(weight) for name, weight in weights.items()}
        self.eps, self.target_std = float(eps), float(target_std)

    def terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The three weighted terms (their sum is the loss) of two views ``z_a``, ``z_b`` (B_local, D)."""
        if z_a.ndim != 2 or z_a.shape != z_b.shape:
            raise ValueError(f"vicreg: views must both be (B, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        dtype = at_least_float32_dtype(z_a.dtype)  # bf16 under autocast: fp32
        z_a, z_b = all_gather_with_grad(z_a.to(dtype)), all_gather_with_grad(z_b.to(dtype))
        if z_a.shape[0] < 2:
            raise ValueError(f"vicreg: batch statistics need at least 2 rows in the global batch, got {z_a.shape[0]}")
        variance = (variance_term(z_a, self.eps, self.target_std) + variance_term(z_b, self.eps, self.target_std)) / 2
        unweighted = {
            "invariance": F.mse_loss(z_a, z_b),
            "variance": variance,
            "covariance": covariance_term(z_a) + covariance_term(z_b),
        }
        return {name: self.weights[name] * unweighted[name] for name in TERMS}

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        terms = self.terms(z_a, z_b)
        return terms["invariance"] + terms["variance"] + terms["covariance"]
