"""NT-Xent / InfoNCE over two views with negatives from the global batch (SimCLR).

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR),
Eq. 1; the InfoNCE bound of van den Oord et al. 2018 ("Representation Learning with Contrastive
Predictive Coding"). With ``u_k = z_k / ||z_k||`` the L2-normalised embeddings of the ``2N`` views of
the *global* batch (view A of image n at index n, view B at index N + n), ``s_ik = u_i . u_k``, the
temperature ``tau`` and ``pos(i)`` the other view of the same image::

    l_i = -log( exp(s_{i,pos(i)} / tau) / sum_{k != i} exp(s_ik / tau) )
    L   = (1 / 2N) * sum_i l_i

so every view has 1 positive and ``2N - 2`` negatives (both views of every other image, from every
rank). Under ``torch.distributed`` the embeddings are all-gathered with gradients flowing back to the
rank that computed them (:func:`dinolite.distributed.autograd.all_gather_with_grad`); each rank averages
``l_i`` over its own ``2B`` anchors, so with the trainer's averaging of gradients over ranks, ``W``
ranks of ``B`` images train exactly as one rank of ``W * B`` (every rank must hold the same ``B``).
Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import all_gather_with_grad, get_rank
from dinolite.dtypes import at_least_float32_dtype


def info_nce_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.1, gather_distributed: bool = True) -> Tensor:
    """NT-Xent of two views ``z_a``, ``z_b`` (B, D) of the same B images; see the module docstring.

    ``gather_distributed=False`` keeps the negatives of this rank only (SimCLR on one accelerator).
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"info_nce_loss: views must both be (B, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce_loss: temperature must be > 0, got {temperature}")
    local = z_a.shape[0]
    dtype = at_least_float32_dtype(z_a.dtype)  # bf16 under autocast: fp32
    a = F.normalize(z_a.to(dtype), dim=1)
    b = F.normalize(z_b.to(dtype), dim=1)
    if gather_distributed:
        keys_a, keys_b, offset = all_gather_with_grad(a), all_gather_with_grad(b), get_rank() * local
    else:
        keys_a, keys_b, offset = a, b, 0
    n_global = keys_a.shape[0]
    if n_global < 2:
        raise ValueError("info_nce_loss: needs at least 2 images in the (global) batch to have a negative")
    keys = torch.cat([keys_a, keys_b])  # (2N, D): all views A, then all views B
    logits = torch.cat([a, b]) @ keys.t() / temperature  # (2B, 2N): this rank's anchors
    rows = torch.arange(local, device=a.device) + offset
    self_index = torch.cat([rows, rows + n_global])
    positive_index = torch.cat([rows + n_global, rows])
    # A view is not its own negative: drop it from the denominator.
    logits = logits.masked_fill(F.one_hot(self_index, 2 * n_global).bool(), float("-inf"))
    return F.cross_entropy(logits, positive_index)


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce_loss` (SimCLR's NT-Xent); no parameters, no state."""

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCELoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return info_nce_loss(z_a, z_b, self.temperature, self.gather_distributed)
