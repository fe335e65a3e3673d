"""DirectCLR: InfoNCE on the first ``d0`` dimensions of the representation, without a projector.

Jing et al. 2022 (ICLR; arXiv 2021), "Understanding Dimensional Collapse in Contrastive
Self-supervised Learning", Sec. 6. Contrastive learning with a projector collapses the *embedding*
dimensionally; the projector is shown to act as a low-rank, diagonal-like selection, so DirectCLR
drops it and applies the contrastive loss directly to a fixed sub-vector of the backbone
representation ``r`` (B, D)::

    z = r[:, :d0]                     (paper: d0 = 360 of ResNet-50's 2048 dims)
    L = NT-Xent(z_A, z_B; tau)         (:mod:`dinolite.losses.info_nce_loss`, negatives from the global batch)

``negatives`` picks the contrast: ``both_views`` (the default, NT-Xent: ``2N - 2`` negatives, both views of
every other image) or ``cross_view`` (the released code's: facebookresearch/directclr ``a86f64c``,
``directclr/main.py:178-181`` calls ``infoNCE(z1, z2) / 2 + infoNCE(z2, z1) / 2``, ``infoNCE`` at 206-216:
``N - 1`` negatives, the other view of every other image). The paper's Sec. 6 names InfoNCE only.

The remaining ``D - d0`` dimensions receive gradients only through the backbone's shared weights; the
paper reports that the full representation still out-performs the sub-vector on linear probing.
"""

from __future__ import annotations

from torch import Tensor, nn

from dinolite.losses.info_nce_loss import NEGATIVES, cross_view_info_nce_loss, info_nce_loss


class DirectCLRLoss(nn.Module):
    """InfoNCE on ``representation[:, :d0]`` of two views, ``negatives`` as the module docstring says (no
    parameters, no state)."""

    def __init__(
        self, d0: int, temperature: float = 0.1, gather_distributed: bool = True, negatives: str = "both_views"
    ) -> None:
        super().__init__()
        if d0 < 1:
            raise ValueError(f"DirectCLRLoss: d0 must be >= 1, got {d0}")
        if temperature <= 0:
            raise ValueError(f"DirectCLRLoss: temperature must be > 0, got {temperature}")
        if negatives not in NEGATIVES:
            raise ValueError(f"DirectCLRLoss: negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.d0 = int(d0)
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed
        self.negatives = negatives

    def forward(self, r_a: Tensor, r_b: Tensor) -> Tensor:
        if r_a.ndim != 2 or r_a.shape[1] < self.d0:
            raise ValueError(
                f"DirectCLRLoss: d0={self.d0} needs representations of at least {self.d0} dims, got {tuple(r_a.shape)}"
            )
        loss = cross_view_info_nce_loss if self.negatives == "cross_view" else info_nce_loss
        return loss(r_a[:, : self.d0], r_b[:, : self.d0], self.temperature, self.gather_distributed)
