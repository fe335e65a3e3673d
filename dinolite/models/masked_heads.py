"""Heads of the masked-prediction methods: SimMIM's pixel decoder, MSN's projector and prototypes.

* :class:`SimMIMHead` -- Xie et al. 2022, "SimMIM", Sec. 3.3: a single linear layer maps each patch
  token to the ``p * p * C`` pixels of its patch, laid out by pixel shuffle (the paper's 1x1 convolution
  + PixelShuffle, written as a Linear on the tokens, the same function with FSDP-friendly parameters).
* :class:`MSNProjectionHead` -- Assran et al. 2022, "Masked Siamese Networks", Appendix (and the
  released ``msn_vits16.yaml``): Linear-BN-GELU-Linear-BN-GELU-Linear, hidden 2048, output 256.
* :class:`Prototypes` -- MSN's K learnable prototypes (K x output), initialised uniformly in
  ``+-sqrt(1/output)`` as the released code does; the loss L2-normalises them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.models.projector import GlobalBatchNorm1d


class SimMIMHead(nn.Module):
    """``forward(patch_tokens (B, h*w, D), grid_hw=(h, w)) -> (B, C, h*p, w*p)`` reconstructed pixels."""

    def __init__(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size, self.in_chans = int(patch_size), int(in_chans)
        self.proj = nn.Linear(embed_dim, self.patch_size**2 * self.in_chans)

    def forward(self, patch_tokens: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        B, N, _ = patch_tokens.shape
        h, w = grid_hw
        if N != h * w:
            raise ValueError(f"SimMIMHead: {N} patch tokens do not form a {h}x{w} grid")
        pixels = self.proj(patch_tokens).transpose(1, 2).reshape(B, -1, h, w)  # (B, C*p*p, h, w)
        return F.pixel_shuffle(pixels, self.patch_size)


HEAD_BN = ("per_rank", "global")


class MSNProjectionHead(nn.Module):
    """Linear(in, hidden)-[BN]-GELU-Linear(hidden, hidden)-[BN]-GELU-Linear(hidden, out).

    ``head_bn``: ``per_rank`` (``nn.BatchNorm1d``: each rank's own batch statistics) or ``global``
    (:class:`dinolite.models.projector.GlobalBatchNorm1d`: the moments all-reduced over the ranks, as the release's
    ``SyncBatchNorm``, ``src/msn_train.py:176-178``, on any backend). Both have the same parameters and state-dict
    keys, and are the same function on one process.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256, use_bn: bool = True, head_bn: str = "per_rank"
    ) -> None:
        super().__init__()
        if head_bn not in HEAD_BN:
            raise ValueError(f"MSNProjectionHead: head_bn must be one of {', '.join(HEAD_BN)}, got {head_bn!r}")
        batch_norm = GlobalBatchNorm1d if head_bn == "global" else nn.BatchNorm1d
        norm = (lambda: batch_norm(hidden_dim)) if use_bn else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class Prototypes(nn.Module):
    """``weight (K, dim)``: MSN's learnable prototypes (the module's forward returns them)."""

    def __init__(self, num_prototypes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(1.0 / self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self) -> Tensor:
        return self.weight
