"""PIRL's NCE loss against a memory bank (Misra & van der Maaten 2020, "Self-Supervised Learning of
Pretext-Invariant Representations", CVPR; Sec. 3.1-3.3, Eq. (5)).

Every image ``I`` has a memory ``m_I`` (a unit vector: the moving average of its embeddings, kept by the
memory bank). The original view gives ``f(v_I)``, the jigsaw view (its 3 x 3 tiles encoded one by one, the
tile embeddings concatenated in the permuted order and projected) gives ``g(v_I^t)``; both are L2-normalised.
Each is scored against the memory of its own image (the positive) and ``K`` memories drawn uniformly from
the bank (the negatives), at temperature ``tau``:

    h(m, v) = exp(<m, v> / tau)
    L(m_I, v) = - log [ h(m_I, v) / (h(m_I, v) + sum_{m' in D_N} h(m', v)) ]     (InfoNCE form)

    loss = lambda * L(m_I, g(v_I^t)) + (1 - lambda) * L(m_I, f(v_I))             (Eq. 5)

with ``tau`` = 0.07, ``lambda`` = 0.5 and ``K`` = 32,000 in the paper. The paper's ``L`` is the binary NCE loss
(each score ``h / (h + K / N)`` against noise, with a normalising constant estimated from the first batch;
facebookresearch/vissl ``pirl_jigsaw_4node_resnet.yaml``, ``loss_type`` left at ``nce``). This module computes
the softmax (InfoNCE) form above, which the release's MLP-head PIRL trains (``models/resnet50_mlphead.yaml``:
``loss_type: cross_entropy``): the logits ``[<m_I, v>, <m'_1, v>, ..., <m'_K, v>] / tau`` and a cross-entropy
with the positive at index 0, averaged over the images. The binary NCE form is not implemented. Memories carry
no gradient. A negative may be the image's own memory (the release draws from every slot alike).
Everything is computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def memory_logits(embedding: Tensor, memory: Tensor, slots: Tensor, temperature: float) -> Tensor:
    """``(B, 1 + K)`` logits ``<memory[slots[b, j]], embedding[b]> / tau``; ``embedding`` (B, D) unit rows,
    ``slots`` (B, 1 + K) long (column 0: the image's own slot, the positive)."""
    weights = memory.detach().float()[slots]  # (B, 1 + K, D)
    return torch.einsum("bkd,bd->bk", weights, embedding.float()) / temperature


def nce_memory_loss(embedding: Tensor, memory: Tensor, slots: Tensor, temperature: float) -> Tensor:
    """``L(m_I, v)`` averaged over the batch: cross-entropy of the positive (column 0 of ``slots``)."""
    logits = memory_logits(embedding, memory, slots, temperature)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


class PIRLLoss(nn.Module):
    """``lambda L(m_I, g(v_I^t)) + (1 - lambda) L(m_I, f(v_I))`` (see the module docstring).

    Args:
        temperature: ``tau`` (> 0).
        jigsaw_weight: ``lambda`` in [0, 1], the weight of the jigsaw term.
    """

    def __init__(self, temperature: float = 0.07, jigsaw_weight: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"PIRLLoss: temperature must be > 0, got {temperature}")
        if not 0.0 <= jigsaw_weight <= 1.0:
            raise ValueError(f"PIRLLoss: jigsaw_weight (lambda) must be in [0, 1], got {jigsaw_weight}")
        self.temperature = float(temperature)
        self.jigsaw_weight = float(jigsaw_weight)

    def forward(
        self,
        jigsaw: Tensor,
        image: Tensor,
        memory: Tensor,
        jigsaw_slots: Tensor,
        image_slots: Tensor,
    ) -> dict[str, Tensor]:
        """``jigsaw`` = g(v_I^t), ``image`` = f(v_I): (B, D), normalised here; ``memory`` (N, D) unit rows;
        ``*_slots`` (B, 1 + K): column 0 each image's own slot, then its negatives (drawn per term).
        Returns ``loss`` and the two terms ``jigsaw_loss`` and ``image_loss``."""
        if jigsaw.shape != image.shape or jigsaw.ndim != 2:
            raise ValueError(
                f"PIRLLoss: jigsaw and image embeddings must be (B, D) alike, got {tuple(jigsaw.shape)} "
                f"and {tuple(image.shape)}"
            )
        if not torch.equal(jigsaw_slots[:, 0], image_slots[:, 0]):
            raise ValueError("PIRLLoss: the two terms' positives (column 0 of the slots) must be the same images")
        jigsaw_loss = nce_memory_loss(F.normalize(jigsaw.float(), dim=1), memory, jigsaw_slots, self.temperature)
        image_loss = nce_memory_loss(F.normalize(image.float(), dim=1), memory, image_slots, self.temperature)
        loss = self.jigsaw_weight * jigsaw_loss + (1.0 - self.jigsaw_weight) * image_loss
        return {"loss": loss, "jigsaw_loss": jigsaw_loss, "image_loss": image_loss}
