"""BEiT masked image modelling: cross-entropy of the predicted visual tokens at the masked patches.

Bao, Dong, Piao & Wei 2022, "BEiT: BERT Pre-Training of Image Transformers" (ICLR), Sec. 2.3, Eq. 1. A
frozen image tokenizer maps each patch ``i`` of an image to a discrete token ``z_i`` in a vocabulary of
``V`` entries; the ViT sees the image with the masked patches ``M`` replaced by a learnable [MASK]
embedding, and a linear head on its last-layer patch tokens gives logits ``l_i`` (``V`` entries). Over the
batch::

    L = - 1 / |M| * sum_{(b, i) in M} log softmax(l_{b,i})[z_{b,i}]

i.e. the mean over all masked patches of the batch (the released ``engine_for_pretraining.py`` selects the
masked positions, then ``nn.CrossEntropyLoss()`` with its default mean). Visible patches do not enter
the loss. fp32 inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BEiTLoss(nn.Module):
    """``loss(logits (B, N, V), tokens (B, N) int64, masks (B, N) bool) -> scalar``; or, with ``masks=None``,
    ``logits (M, V)`` and ``tokens (M,)`` already selected at the masked patches (the objective computes the
    head on those only, as the release does)."""

    def forward(self, logits: Tensor, tokens: Tensor, masks: Tensor | None = None) -> Tensor:
        if masks is not None:
            if logits.shape[:2] != tokens.shape or tokens.shape != masks.shape:
                raise ValueError(
                    f"logits {tuple(logits.shape)}, tokens {tuple(tokens.shape)} and masks {tuple(masks.shape)} "
                    "must share (batch, patches)"
                )
            logits, tokens = logits[masks], tokens[masks]
        if tokens.numel() == 0:
            raise ValueError("no patch is masked: the BEiT loss is a mean over the masked patches")
        return F.cross_entropy(logits.float(), tokens.to(torch.int64))
