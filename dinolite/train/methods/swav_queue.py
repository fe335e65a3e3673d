"""SwAV's feature queue: the unit-norm projections of the last batches, whose scores join the Sinkhorn.

Caron et al. 2020, Sec. 4 / App. A: with a small batch (256 images) the Sinkhorn cannot spread ``B`` codes over
``K = 3000`` prototypes, so the projections of the last ``queue_length`` images (3840 in the release's
batch-256 recipes) are kept and their scores, with the current prototypes, are prepended to the batch's. The
release (``main_swav.py``): each rank keeps ``queue_length / world`` rows per assignment crop (the length first
rounded down to a multiple of the global batch), newest first; the queue starts empty at epoch
``epoch_queue_starts``, is filled after each step's codes are computed, and takes part once it is full.

Here every rank holds every rank's queue (buffers of the objective, saved with the model) and reads its own
rows: the projections are all-gathered (no gradient) so that the checkpoint, which saves one copy of a
replicated buffer, resumes each rank's queue bitwise. A queue saved on one world size loads on another when its
total number of rows is the same (the rows are then dealt out again in rank order).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dinolite.config import ConfigError
from dinolite.distributed.collectives import get_rank, get_world_size


def rows_per_rank(queue_length: int, batch_per_rank: int, world: int) -> int:
    """The release's per-rank queue: ``queue_length`` rounded down to a multiple of the global batch, / world."""
    global_batch = batch_per_rank * world
    rows = (queue_length - queue_length % global_batch) // world
    if rows < batch_per_rank:
        raise ConfigError(
            f"invalid value for 'swav.queue_length': {queue_length}; must be at least the global batch "
            f"({batch_per_rank} x {world} ranks = {global_batch}) or 0 (no queue)"
        )
    return rows


def gather_rows(x: Tensor) -> Tensor:
    """``x`` (B, D) of every rank, stacked in rank order: (world, B, D), no gradient."""
    x = x.detach().contiguous()
    if get_world_size() == 1:
        return x.unsqueeze(0)
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x)
    return torch.stack(parts)


class FeatureQueue(nn.Module):
    """The queue of ``n_crops`` assignment crops of ``dim`` features, ``batch_per_rank`` rows pushed per rank and
    step. Buffers (saved with the model, moved with it): ``rows`` (n_crops, world x rows_per_rank, dim), rank
    ``r``'s rows at ``[r * rows_per_rank, (r + 1) * rows_per_rank)``, newest first; ``fills``, the steps pushed."""

    def __init__(self, queue_length: int, n_crops: int, batch_per_rank: int, dim: int, world: int) -> None:
        super().__init__()
        self.batch = int(batch_per_rank)
        self.world = int(world)
        self.per_rank = rows_per_rank(queue_length, self.batch, self.world)
        self.register_buffer("rows", torch.zeros(n_crops, self.world * self.per_rank, dim))
        self.register_buffer("fills", torch.zeros((), dtype=torch.int64))

    def full(self) -> bool:
        """Whether every row holds a projection (the release's test: the last row is not all zeros)."""
        return int(self.fills) * self.batch >= self.per_rank

    def own(self, crop: int) -> Tensor | None:
        """This rank's rows of assignment crop ``crop`` (newest first) once the queue is full; else None."""
        if not self.full():
            return None
        start = get_rank() * self.per_rank
        return self.rows[crop, start : start + self.per_rank]

    @torch.no_grad()
    def push(self, crop: int, embeddings: Tensor) -> None:
        """Prepend this step's ``embeddings`` (B, D) of assignment crop ``crop`` from every rank; the oldest fall
        off. Call for every crop, then :meth:`step_done`."""
        if embeddings.shape[0] != self.batch:
            raise ValueError(f"swav queue: a batch of {embeddings.shape[0]} rows, expected {self.batch}")
        gathered = gather_rows(embeddings)  # (world, B, D)
        if gathered.shape[0] != self.world:
            raise ValueError(f"swav queue: built for {self.world} ranks, running on {gathered.shape[0]}")
        queue = self.rows[crop].view(self.world, self.per_rank, -1)
        queue[:, self.batch :] = queue[:, : -self.batch].clone()
        queue[:, : self.batch] = gathered.to(queue.dtype)

    @torch.no_grad()
    def step_done(self) -> None:
        self.fills += 1
