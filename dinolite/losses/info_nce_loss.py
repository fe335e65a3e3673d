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

Cross-view negatives (:func:`cross_view_info_nce_loss`, DirectCLR's released loss,
facebookresearch/directclr ``a86f64c``, ``directclr/main.py:178-181`` and ``:206-216``): an anchor of view A is contrasted
with view B of every image only (its positive and ``N - 1`` negatives), and the other way round::

    L_AB = -(1 / N) * sum_n log( exp(s(u^A_n, u^B_n) / tau) / sum_m exp(s(u^A_n, u^B_m) / tau) )
    L    = (L_AB + L_BA) / 2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import all_gather_with_grad, get_rank
from dinolite.dtypes import at_least_float32_dtype

# which views of the other images are an anchor's negatives (the module docstring)
NEGATIVES = ("both_views", "cross_view")


def _unit_views(z_a: Tensor, z_b: Tensor, temperature: float, caller: str) -> tuple[Tensor, Tensor]:
    """The two views L2-normalised in (at least) fp32, after checking their shapes and ``temperature``."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"{caller}: views must both be (B, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"{caller}: temperature must be > 0, got {temperature}")
    dtype = at_least_float32_dtype(z_a.dtype)  # bf16 under autocast: fp32
    return F.normalize(z_a.to(dtype), dim=1), F.normalize(z_b.to(dtype), dim=1)


def _global_keys(a: Tensor, b: Tensor, gather_distributed: bool, caller: str) -> tuple[Tensor, Tensor, int]:
    """Both views of the global batch (gradients flow back to their rank) and this rank's first row in it."""
    if gather_distributed:
        keys_a, keys_b, offset = all_gather_with_grad(a), all_gather_with_grad(b), get_rank() * a.shape[0]
    else:
        keys_a, keys_b, offset = a, b, 0
    if keys_a.shape[0] < 2:
        raise ValueError(f"{caller}: needs at least 2 images in the (global) batch to have a negative")
    return keys_a, keys_b, offset


def info_nce_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.1, gather_distributed: bool = True) -> Tensor:
    """NT-Xent of two views ``z_a``, ``z_b`` (B, D) of the same B images; see the module docstring.

    ``gather_distributed=False`` keeps the negatives of this rank only (SimCLR on one accelerator).
    """
    a, b = _unit_views(z_a, z_b, temperature, "info_nce_loss")
    keys_a, keys_b, offset = _global_keys(a, b, gather_distributed, "info_nce_loss")
    local, n_global = a.shape[0], keys_a.shape[0]
    keys = torch.cat([keys_a, keys_b])  # (2N, D): all views A, then all views B
    logits = torch.cat([a, b]) @ keys.t() / temperature  # (2B, 2N): this rank's anchors
    rows = torch.arange(local, device=a.device) + offset
    self_index = torch.cat([rows, rows + n_global])
    positive_index = torch.cat([rows + n_global, rows])
    # A view is not its own negative: drop it from the denominator.
    logits = logits.masked_fill(F.one_hot(self_index, 2 * n_global).bool(), float("-inf"))
    return F.cross_entropy(logits, positive_index)


def cross_view_info_nce_loss(
    z_a: Tensor, z_b: Tensor, temperature: float = 0.1, gather_distributed: bool = True
) -> Tensor:
    """InfoNCE with cross-view negatives only, averaged over both directions (the module docstring): each
    anchor has ``N - 1`` negatives, the other view of the other images. Distributed as :func:`info_nce_loss`."""
    a, b = _unit_views(z_a, z_b, temperature, "cross_view_info_nce_loss")
    keys_a, keys_b, offset = _global_keys(a, b, gather_distributed, "cross_view_info_nce_loss")
    positives = torch.arange(a.shape[0], device=a.device) + offset
    a_to_b = F.cross_entropy(a @ keys_b.t() / temperature, positives)
    b_to_a = F.cross_entropy(b @ keys_a.t() / temperature, positives)
    return 0.5 * (a_to_b + b_to_a)


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
