"""SIGReg: Sketched Isotropic Gaussian Regularisation, LeJEPA's anti-collapse term.

Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics" (arXiv:2511.08544), Sec. 4. The embeddings ``z_n`` (N rows of dimension D) should follow the
isotropic Gaussian N(0, I). SIGReg tests that on ``K`` random directions ``a_k`` (unit columns of
``A``, D x K): each slice ``x_n = a_k^T z_n`` should be N(0, 1), which the Epps-Pulley statistic measures
through the empirical characteristic function (ECF)::

    ecf_k(t)  = 1/N sum_n exp(i t x_n)
    T_k       = N * int |ecf_k(t) - exp(-t^2/2)|^2 w(t) dt,          w(t) = exp(-t^2/2)
    SIGReg    = 1/K sum_k T_k

``|ecf(t) - phi(t)|^2 = (mean cos(t x) - phi(t))^2 + (mean sin(t x))^2`` is even in ``t``, so the
integral over ``[-t_max, t_max]`` is twice the one over ``[0, t_max]``: the trapezoid rule on
``n_points`` equally spaced knots of ``[0, t_max]`` with doubled weights (``dt`` at both ends, ``2 dt``
inside), as the release (rbalestr-lab/lejepa, ``lejepa/univariate/epps_pulley.py``, ``EppsPulley``:
``t_max`` 3, 17 knots) does. ``A``'s columns are Gaussian draws normalised to unit length
(``lejepa/multivariate/slicing.py``); :func:`slice_directions` draws them from a seed so that every rank
and a resumed run see the same directions.

Global batch: the ECF means are over the global batch (sums all-reduced across ranks, gradients flowing
back through :func:`dinolite.distributed.all_reduce_sum_with_grad`) and ``N`` is the global row count,
as the release (an all-reduce AVG of the per-rank means, ``N * world_size``): ``W`` ranks of ``B`` rows
give the statistic and, after the trainer averages gradients, the gradient of one rank holding ``W * B``
rows (every rank must hold the same ``B``). Computed in fp32 (float64 stays float64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinolite.distributed import all_reduce_sum_with_grad, get_world_size
from dinolite.dtypes import at_least_float32_dtype


def slice_directions(dim: int, num_slices: int, seed: int) -> Tensor:
    """``A`` (dim, num_slices): standard-normal draws of a CPU generator seeded with ``seed``, each column
    divided by its L2 norm (the release's ``SlicingUnivariateTest`` with ``seed`` its step counter).

    Drawn on the CPU whatever the training device, so the directions of a step are the same on every rank,
    on every device and after a resume."""
    if dim < 1 or num_slices < 1:
        raise ValueError(f"slice_directions: dim and num_slices must be >= 1, got {dim} and {num_slices}")
    generator = torch.Generator().manual_seed(int(seed))
    directions = torch.randn(dim, num_slices, generator=generator)
    return directions / directions.norm(p=2, dim=0)


def epps_pulley_knots(t_max: float, n_points: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, phi, weights)`` of the symmetric trapezoid rule on ``[0, t_max]`` (float32, as the release):
    ``phi = exp(-t^2/2)`` (the N(0,1) characteristic function, which is also the window ``w``) and
    ``weights = trapezoid weights x 2 (symmetry) x w(t)``."""
    if not t_max > 0 or n_points < 2:
        raise ValueError(f"epps_pulley_knots: t_max must be > 0 and n_points >= 2, got {t_max} and {n_points}")
    t = torch.linspace(0, t_max, n_points, dtype=torch.float32)
    dt = t_max / (n_points - 1)
    weights = torch.full((n_points,), 2 * dt, dtype=torch.float32)
    weights[[0, -1]] = dt
    phi = torch.exp(-t.square() / 2)
    return t, phi, weights * phi


class SIGRegLoss(nn.Module):
    """``1/K sum_k T_k`` (see the module docstring) of embeddings ``z`` (..., N, D) along ``directions``.

    Leading dimensions (LeJEPA's views) are tested separately and averaged with the slices, as the release
    does for a (V, N, D) input.

    Args:
        t_max: the integration range ``[-t_max, t_max]`` (release: 3).
        n_points: knots on ``[0, t_max]`` (release: 17).
    """

    def __init__(self, t_max: float = 3.0, n_points: int = 17) -> None:
        super().__init__()
        t, phi, weights = epps_pulley_knots(t_max, n_points)
        # constants of the quadrature, rebuilt from the config: not checkpointed
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("phi", phi, persistent=False)
        self.register_buffer("weights", weights, persistent=False)

    def statistics(self, z: Tensor, directions: Tensor) -> Tensor:
        """``T_k`` per slice: (..., K) for ``z`` (..., N, D) and ``directions`` (D, K)."""
        if z.ndim < 2 or directions.ndim != 2 or z.shape[-1] != directions.shape[0]:
            raise ValueError(
                f"sigreg: embeddings (..., N, D) and directions (D, K) needed, got {tuple(z.shape)} and "
                f"{tuple(directions.shape)}"
            )
        dtype = at_least_float32_dtype(z.dtype)  # bf16 under autocast: fp32
        x = z.to(dtype) @ directions.to(device=z.device, dtype=dtype)  # (..., N, K)
        x_t = x.unsqueeze(-1) * self.t.to(dtype)  # (..., N, K, knots)
        rows = z.shape[-2] * get_world_size()
        cos_mean = all_reduce_sum_with_grad(x_t.cos().sum(-3)) / rows
        sin_mean = all_reduce_sum_with_grad(x_t.sin().sum(-3)) / rows
        err = (cos_mean - self.phi.to(dtype)).square() + sin_mean.square()  # (..., K, knots)
        return (err @ self.weights.to(dtype)) * rows

    def forward(self, z: Tensor, directions: Tensor) -> Tensor:
        return self.statistics(z, directions).mean()
