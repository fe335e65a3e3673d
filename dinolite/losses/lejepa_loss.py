"""The LeJEPA objective: every view predicts the mean of the global views, SIGReg keeps the embeddings an
isotropic Gaussian.

Balestriero & LeCun 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics" (arXiv:2511.08544), Sec. 5. With ``z_{v,n}`` the projected embedding of view ``v`` of image
``n`` (``V`` views, the first ``V_g`` of them global) and ``mu_n = 1/V_g sum_{v < V_g} z_{v,n}`` the mean
of the image's global views::

    prediction = 1/(V N K) sum_{v,n} ||mu_n - z_{v,n}||^2
    sigreg     = 1/V sum_v SIGReg({z_{v,n}}_n)                  (dinolite.losses.sigreg_loss)
    L          = (1 - lambda) * prediction + lambda * sigreg

The centre is not detached (no stop-gradient) and there is no predictor and no teacher: the mean of the
global views is the "prediction target" of every view, global and local. The release's minimal example
(rbalestr-lab/lejepa, ``MINIMAL.md``) writes the same with all its views global
(``(proj.mean(0) - proj).square().mean()`` and ``sigreg(proj)`` on the (V, N, K) projections, one set of
directions per step for every view).

Global batch: the prediction term is a mean over this rank's images (the mean over ranks of it is the
global mean, and so is the averaged gradient); SIGReg is a statistic of the global batch (see its module).
"""

from __future__ import annotations

from torch import Tensor, nn

from dinolite.dtypes import at_least_float32_dtype
from dinolite.losses.sigreg_loss import SIGRegLoss

TERMS = ("prediction", "sigreg")


def prediction_term(views: Tensor, n_global: int) -> Tensor:
    """``1/(V N K) sum ||mu_n - z_{v,n}||^2`` of ``views`` (V, N, K), ``mu`` the mean of the first
    ``n_global`` views (no stop-gradient)."""
    centres = views[:n_global].mean(0)
    return (centres - views).square().mean()


class LeJEPALoss(nn.Module):
    """``(1 - lambda) prediction + lambda SIGReg`` (see the module docstring); no state.

    Args:
        sigreg_weight: ``lambda`` in [0, 1].
        t_max, n_points: SIGReg's Epps-Pulley quadrature (:class:`SIGRegLoss`).
    """

    def __init__(self, sigreg_weight: float = 0.05, t_max: float = 3.0, n_points: int = 17) -> None:
        super().__init__()
        if not 0.0 <= sigreg_weight <= 1.0:
            raise ValueError(f"LeJEPALoss: sigreg_weight (lambda) must be in [0, 1], got {sigreg_weight}")
        self.sigreg_weight = float(sigreg_weight)
        self.sigreg = SIGRegLoss(t_max, n_points)

    def terms(self, views: Tensor, n_global: int, directions: Tensor) -> dict[str, Tensor]:
        """The two weighted terms (their sum is the loss) of ``views`` (V, N, K): the first ``n_global`` are
        the global views; ``directions`` (K, slices) are this step's SIGReg slices."""
        if views.ndim != 3 or not 1 <= n_global <= views.shape[0]:
            raise ValueError(
                f"lejepa: views must be (V, N, K) with 1 <= n_global <= V, got {tuple(views.shape)} and "
                f"n_global={n_global}"
            )
        views = views.to(at_least_float32_dtype(views.dtype))
        return {
            "prediction": (1.0 - self.sigreg_weight) * prediction_term(views, n_global),
            "sigreg": self.sigreg_weight * self.sigreg(views, directions),
        }

    def forward(self, views: Tensor, n_global: int, directions: Tensor) -> Tensor:
        terms = self.terms(views, n_global, directions)
        return terms["prediction"] + terms["sigreg"]
