"""PIRL's memory bank: one unit embedding per training image, moved with momentum, and the negatives drawn from it.

Misra & van der Maaten 2020, Sec. 3.2: ``m_I`` is the exponential moving average of ``f(v_I)`` over past
epochs; the negatives are memories of other images. The released code (facebookresearch/vissl,
``NCEAverage`` of ``nce_loss_with_memory``): ``memory_size`` slots (the number of training images)
initialised uniform in ``[-s, s]``, ``s = 1 / sqrt(D / 3)``, then L2-normalised; after the scores,
``m <- normalise(momentum m + (1 - momentum) f)`` with the normalised image embeddings of the whole global batch
(all-gathered); negatives drawn uniformly over all slots, column 0 the image's own slot. Momentum 0.5 in the
paper and the release.

Slots: the release indexes the bank by the dataset index; dinolite's loader streams images without one, so an
image's slot is found from its ``image_id`` (a hash of its pixels, :mod:`dinolite.data.jigsaw`) by open
addressing (linear probing) in a table of ``size`` slots, filled in the global batch's rank order, the same
on every rank. ``size`` must be at least the number of distinct training images; a fuller table is an error
naming ``pirl.memory_bank_size``.

Negatives: drawn for the whole global batch from a generator seeded by (``seed``, iteration), every rank taking
its own rows, so 2 processes draw what 1 process draws and a resumed run draws what the uninterrupted one drew.

State (buffers, checkpointed with the objective, identical on every rank): ``memory`` (N, D) and ``keys`` (N,)
int64 (the image key in each slot, -1 for an empty slot).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.config import ConfigError
from dinolite.distributed.collectives import get_rank
from dinolite.train.methods.swav_queue import gather_rows

EMPTY = -1
SEED_NEGATIVES = 0x5049524C  # "PIRL": keeps the negatives' stream apart from other draws of the same seed


def initial_memory(size: int, dim: int, generator: torch.Generator) -> Tensor:
    """The release's initial bank: uniform in ``[-s, s]``, ``s = 1 / sqrt(dim / 3)``, rows L2-normalised."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return F.normalize(torch.rand(size, dim, generator=generator).mul_(2 * stdv).add_(-stdv), dim=1)


class MemoryBank(nn.Module):
    """``size`` unit memories of ``dim`` features (see the module docstring).

    Args:
        size: slots (>= the number of distinct training images).
        dim: the embedding width.
        momentum: the weight of the old memory in the update (0.5 in the paper).
        num_negatives: ``K`` memories drawn per image and term.
        seed: seeds the initial memory and the negatives.
    """

    def __init__(self, size: int, dim: int, momentum: float = 0.5, num_negatives: int = 32000, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1 or num_negatives < 1:
            raise ValueError(
                f"MemoryBank: size, dim and num_negatives must be >= 1, got {size}, {dim}, {num_negatives}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MemoryBank: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.num_negatives, self.seed = float(momentum), int(num_negatives), int(seed)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("memory", initial_memory(size, dim, generator))
        self.register_buffer("keys", torch.full((size,), EMPTY, dtype=torch.int64))

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    @torch.no_grad()
    def slots(self, image_ids: Tensor) -> Tensor:
        """The slots of the global batch's ``image_ids`` (B_global,), claiming an empty slot for a new key."""
        keys = self.keys.tolist()
        found = []
        for key in image_ids.tolist():
            slot = key % self.size
            for _ in range(self.size):
                if keys[slot] in (key, EMPTY):
                    break
                slot = (slot + 1) % self.size
            else:
                raise ConfigError(
                    f"invalid value for 'pirl.memory_bank_size': {self.size}; the memory bank is full, it needs one "
                    "slot per distinct training image (set it to at least the number of training images)"
                )
            keys[slot] = key
            found.append(slot)
        self.keys.copy_(torch.tensor(keys, dtype=torch.int64))
        return torch.tensor(found, dtype=torch.int64, device=self.memory.device)

    def draw(self, own_slots: Tensor, iteration: int, terms: int = 2) -> list[Tensor]:
        """For each of ``terms`` loss terms, (B_global, 1 + K) slots: column 0 ``own_slots``, then ``K`` uniform
        draws over the bank (one generator per iteration: the same on every rank and after a resume)."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + SEED_NEGATIVES + int(iteration)) % 2**63)
        n = own_slots.shape[0]
        negatives = torch.randint(0, self.size, (terms, n, self.num_negatives), generator=generator)
        own = own_slots.cpu().view(1, n, 1).expand(terms, n, 1)
        return list(torch.cat([own, negatives], dim=2).to(self.memory.device).unbind(0))

    @torch.no_grad()
    def update(self, embeddings: Tensor, slots: Tensor) -> None:
        """``m <- normalise(momentum m + (1 - momentum) e)`` for the global batch's normalised ``embeddings``."""
        moved = self.memory[slots] * self.momentum + embeddings.float() * (1.0 - self.momentum)
        self.memory.index_copy_(0, slots, F.normalize(moved, dim=1))


def global_batch(x: Tensor) -> Tensor:
    """This rank's ``x`` (B, ...) of every rank in rank order: (world * B, ...), no gradient."""
    return gather_rows(x).flatten(0, 1)


def own_rows(x: Tensor, batch: int) -> Tensor:
    """This rank's rows of a global-batch tensor."""
    start = get_rank() * batch
    return x[start : start + batch]
