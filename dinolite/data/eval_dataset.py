"""The once-through evaluation dataset: every sample of a source exactly once, in source order, split
over ranks and DataLoader workers (sample ``j`` goes to slot ``j % S``), as ``(image, label, j)``.

Used by kNN / linear evaluation and feature extraction; unlike the training stream there is no
shuffle, no resampling and no augmentation seeding.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from dinolite.data.budget import DEFAULT_MAX_SAMPLE_BYTES
from dinolite.data.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from dinolite.data.sources import (
    RawSample,
    SourceError,
    Unit,
    image_bytes,
    read_unit,
    resolve_source,
    sample_label,
)

logger = logging.getLogger(__name__)


class EvalDataset(IterableDataset):
    """``(image, label, index)`` for every sample once, split over ranks and DataLoader workers."""

    def __init__(
        self,
        units: Sequence[Unit],
        transform: Optional[Callable[[torch.Tensor], Any]],
        rank: int,
        world_size: int,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.units = list(units)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.max_image_pixels = max_image_pixels
        self.max_sample_bytes = max_sample_bytes
        counts = [u.num_samples for u in self.units]
        self.num_samples: Optional[int] = None if None in counts else sum(counts)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        n_slots = self.world_size * n_workers
        slot = self.rank * n_workers + worker
        for index, sample in self._indexed_samples(slot, n_slots):
            try:
                image = decode_image(image_bytes(sample), self.max_image_pixels)
                item = self.transform(image) if self.transform is not None else image
            except Exception as exc:  # any per-sample failure: size, decoding, conversion, transform
                logger.warning(
                    "skipping sample %s key %r: %s: %s",
                    sample.get("__url__"),
                    sample.get("__key__"),
                    type(exc).__name__,
                    exc,
                )
                continue
            # A label that is not a class index raises (LabelError names shard and key): labels are
            # ground truth, never skipped.
            yield item, sample_label(sample), index

    def _indexed_samples(self, slot: int, n_slots: int) -> Iterator[tuple[int, RawSample]]:
        """``(j, sample)`` for this slot's samples (``j % n_slots == slot``). A damaged shard gives its samples
        up to the damage and a warning (from one slot); only reading errors are caught here."""
        index = 0
        for unit in self.units:
            try:
                for sample in read_unit(unit, self.max_sample_bytes):
                    index += 1
                    if (index - 1) % n_slots == slot:
                        yield index - 1, sample
            except (SourceError, OSError) as exc:
                if index % n_slots == slot:  # one slot reports it
                    logger.warning("%s", exc)


def build_eval_dataset(
    source: Sequence[str] | str,
    transform: Optional[Callable[[torch.Tensor], Any]],
    rank: int = 0,
    world_size: int = 1,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
) -> EvalDataset:
    """Every sample of ``source`` exactly once (no shuffle, no resampling) as ``(image, label, index)``
    where ``index`` is the sample's position in the source; sample ``j`` goes to rank/worker slot
    ``j % (world_size * num_workers)``. Unusable samples (undecodable, above ``max_image_pixels`` or
    ``max_sample_bytes``, failing the transform) are skipped with a warning naming shard and key; a damaged
    shard gives the samples before the damage and a warning; a ``cls`` that is not a class index raises
    :class:`~dinolite.data.sources.LabelError` naming shard and key."""
    return EvalDataset(resolve_source(source), transform, rank, world_size, max_image_pixels, max_sample_bytes)
