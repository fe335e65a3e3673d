"""Symmetric negative cosine similarity with a stop-gradient switch (SimSiam, BYOL).

Chen & He 2021, "Exploring Simple Siamese Representation Learning" (SimSiam), Eqs. 1-3: with ``p`` the
predictor output of one view and ``z`` the projector output of the other,
``D(p, z) = - (p / ||p||) . (z / ||z||)`` averaged over the batch, and::

    L = 1/2 * D(p_A, sg(z_B)) + 1/2 * D(p_B, sg(z_A))

where ``sg`` is the stop-gradient. :meth:`NegativeCosineLoss.directed` is one term alone, ``D(p_S, sg(z_T))``:
the asymmetric loss with a *source* view S (predictor side) and a *target* view T, which Wang et al. 2022
("On the Importance of Asymmetry for Siamese Representation Learning") use to give the two branches
different augmentations or crops. Without the stop-gradient (``stop_gradient=False``) the paper shows the
representation collapses to a constant. Grill et al. 2020, "Bootstrap Your Own Latent" (BYOL), Eq. 2,
uses ``|| p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)`` with ``z`` from an EMA target network: the same
minimiser and the same gradient up to a factor 2. Each rank averages over its own rows (a per-sample
loss: no cross-rank statistic). Computed in fp32.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.dtypes import at_least_float32_dtype


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """``-mean_b cos(p_b, z_b)`` for (B, D) tensors."""
    if p.shape != z.shape or p.ndim != 2:
        raise ValueError(f"negative_cosine: p and z must both be (B, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    dtype = at_least_float32_dtype(p.dtype)  # bf16 under autocast: fp32
    return -F.cosine_similarity(p.to(dtype), z.to(dtype), dim=1).mean()


class NegativeCosineLoss(nn.Module):
    """``1/2 D(p_A, sg(z_B)) + 1/2 D(p_B, sg(z_A))``; ``stop_gradient=False`` lets gradients into ``z``."""

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = stop_gradient

    def forward(self, p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
        if self.stop_gradient:
            z_a, z_b = z_a.detach(), z_b.detach()
        return 0.5 * negative_cosine(p_a, z_b) + 0.5 * negative_cosine(p_b, z_a)

    def directed(self, p_source: Tensor, z_target: Tensor) -> Tensor:
        """``D(p_S, sg(z_T))``: the source view predicts the target view, not the other way round."""
        return negative_cosine(p_source, z_target.detach() if self.stop_gradient else z_target)
