"""I-JEPA latent regression: predict the target encoder's patch representations of the target blocks.

Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture" (I-JEPA), Sec. 3. With ``s_y = LN(f_target(y))`` the target encoder's output tokens,
layer-normalised over the channel dimension without affine parameters (the reference normalises the
target tokens this way before selecting the blocks), ``B_i`` the patch indices of target block ``i``
(``M`` blocks) and ``s_hat`` the predictor's outputs at those positions::

    L = 1/M * sum_i 1/|B_i| * sum_{j in B_i} d(s_hat_j, s_y_j)

averaged over images. The paper writes ``d`` as the squared L2 distance; the released code uses
PyTorch's smooth-L1 (Huber, beta 1) averaged over channels. ``distance`` chooses: ``"smooth_l1"``
(released code, default), ``"mse"`` (squared error averaged over channels), ``"l1"``. Targets are
computed without gradient (the target encoder is an EMA of the context encoder). fp32 inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# distance name -> elementwise loss (called with reduction="none")
DISTANCES = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss, "l1": F.l1_loss}


def gather_tokens(tokens: Tensor, indices: Tensor) -> Tensor:
    """``tokens (B, N, D)``, ``indices (B, *S)`` long -> ``(B, *S, D)`` (row-wise ``tokens[b, indices[b]]``)."""
    if tokens.ndim != 3 or indices.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"gather_tokens: tokens (B, N, D) and indices (B, ...) must share B, got {tuple(tokens.shape)} "
            f"and {tuple(indices.shape)}"
        )
    flat = indices.reshape(indices.shape[0], -1)
    picked = torch.gather(tokens, 1, flat.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return picked.reshape(*indices.shape, tokens.shape[-1])


class IJEPALoss(nn.Module):
    """``forward(predictions (B, M, Nt, D), target_tokens (B, N, D), target_idx (B, M, Nt)) -> loss``."""

    def __init__(self, distance: str = "smooth_l1") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"IJEPALoss: distance={distance!r} is not one of {', '.join(DISTANCES)}")
        self.distance = distance

    @staticmethod
    @torch.no_grad()
    def targets(target_tokens: Tensor, target_idx: Tensor) -> Tensor:
        """Layer-normalised (no affine) target tokens at the target positions, ``(B, M, Nt, D)`` fp32."""
        normed = F.layer_norm(target_tokens.float(), (target_tokens.shape[-1],))
        return gather_tokens(normed, target_idx)

    def errors(self, predictions: Tensor, target_tokens: Tensor, target_idx: Tensor) -> Tensor:
        """The distance per element, ``(B, M, Nt, D)`` fp32: the loss is its mean, :meth:`per_image` its
        mean per image."""
        targets = self.targets(target_tokens, target_idx)
        if predictions.shape != targets.shape:
            raise ValueError(
                f"IJEPALoss: predictions {tuple(predictions.shape)} do not match the targets {tuple(targets.shape)} "
                f"selected by target_idx {tuple(target_idx.shape)}"
            )
        return DISTANCES[self.distance](predictions.float(), targets, reduction="none")

    @staticmethod
    @torch.no_grad()
    def per_image(errors: Tensor) -> Tensor:
        """``errors (B, ...)`` -> ``(B,)``: each image's mean distance over its target blocks, tokens and
        channels. A diagnostic: near 0 once the targets are predictable from their positions alone."""
        return errors.flatten(1).mean(dim=1)

    def forward(self, predictions: Tensor, target_tokens: Tensor, target_idx: Tensor) -> Tensor:
        return self.errors(predictions, target_tokens, target_idx).mean()
