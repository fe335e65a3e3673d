"""Streaming loaders: an infinite, exactly resumable training stream and a once-through eval dataset.

Training stream (``build_train_loader``)
---------------------------------------
Ranks and DataLoader workers form ``S = world_size * max(1, num_workers)`` *slots*; slot ``s = rank *
W + w`` belongs to logical worker ``w`` of ``rank``. Data is consumed in epochs (passes over the
source), endlessly:

1. epoch ``e`` permutes the units (shards, or files of a folder) with a generator seeded by
   ``(seed, e)`` -- the same on every slot -- and gives slot ``s`` the units ``s, s+S, s+2S, ...``.
   When there are fewer units than slots, every slot reads all units and keeps the samples whose
   running index ``j`` has ``j % S == s``. Either way each sample reaches exactly one slot per epoch.
2. a shuffle buffer (seeded by ``(seed, s, e)``) mixes each slot's samples; it is drained at the end
   of the epoch, so epochs never mix.
3. logical worker ``w`` cuts its stream into batches of ``batch_size`` consecutive samples: its
   ``j``-th batch is global batch ``b = w + j W`` (the DataLoader takes batches round-robin from the
   workers, in order). Sample ``p`` of batch ``b`` is augmented with a generator seeded by ``(seed,
   rank, b, p)`` and the batch's masks with one seeded by ``(seed, rank, b)``.

A corrupt sample is still one position of the stream: it is replaced by a fresh augmentation of
another sample of its batch, and counted in the batch's ``skipped_samples``. So batch ``b`` depends
only on ``(source, seed, rank, world_size, num_workers, b)``: ``start_batch=k`` resumes exactly by
making physical worker ``i`` play logical worker ``(i + k) % W`` (the DataLoader asks worker 0 first),
skipping the samples of its batches before ``k`` without decoding them. Whole epochs are skipped
without reading when the shards' sample counts are known (index JSON from ``make_shards``).

Eval dataset (``build_eval_dataset``): every sample once, in source order, sample ``j`` going to slot
``j % S`` (ranks x DataLoader workers), as ``(image, label, j)``.
"""

from __future__ import annotations

import inspect
import io
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_image as tv_decode_image
from torchvision.transforms.v2.functional import pil_to_tensor

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

# Purposes mixed into derived seeds, so that the order, shuffle, augmentation and mask streams of the
# same (seed, slot, ...) are independent.
_ORDER, _SHUFFLE, _AUGMENT, _MASK = 1, 2, 3, 4
_MAX_EMPTY_EPOCHS = 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes all ``parts`` (non-negative ints) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def expand_source(source: Sequence[str] | str) -> list[str]:
    """Shard URLs (or image files of a folder) that ``source`` stands for. Errors name the pattern."""
    return [unit.url for unit in resolve_source(source)]


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB tensor (3, H, W). Raises ``ValueError`` when undecodable."""
    if not data:
        raise ValueError("empty image data")
    try:
        return tv_decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as tv_error:
        # torchvision has no BMP decoder (and may lack others depending on its build): try PIL.
        try:
            with Image.open(io.BytesIO(data)) as img:
                return pil_to_tensor(img.convert("RGB"))
        except Exception as pil_error:  # PIL raises many types for bad data
            raise ValueError(f"undecodable image: {tv_error}; PIL: {pil_error}") from pil_error


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------------------------------------
# Sample streams
# ------------------------------------------------------------------------------------------------


def _epoch_plan(units: Sequence[Unit], seed: int, epoch: int, slot: int, n_slots: int) -> tuple[list[Unit], bool]:
    """Units slot ``slot`` reads in ``epoch`` and whether it keeps every ``n_slots``-th sample only."""
    order = torch.randperm(len(units), generator=seeded_generator(seed, _ORDER, epoch)).tolist()
    permuted = [units[i] for i in order]
    if len(permuted) >= n_slots:
        return permuted[slot::n_slots], False
    return permuted, True


def _known_count(units: Sequence[Unit], by_sample: bool, slot: int, n_slots: int) -> Optional[int]:
    if any(u.num_samples is None for u in units):
        return None
    total = sum(u.num_samples for u in units)  # type: ignore[misc]
    return len(range(slot, total, n_slots)) if by_sample else total


def _read_units(units: Sequence[Unit], by_sample: bool, slot: int, n_slots: int) -> Iterator[RawSample]:
    """Raw samples of ``units`` (every ``n_slots``-th from ``slot`` when ``by_sample``).

    An unreadable shard ends early and yields one ``__error__`` sample in its place, so the damage is
    counted like a corrupt sample instead of stopping a week-long run.
    """
    index = 0
    for unit in units:
        try:
            for sample in read_unit(unit):
                if not by_sample or index % n_slots == slot:
                    yield sample
                index += 1
        except (SourceError, OSError) as exc:
            logger.warning("skipping the rest of %s: %s", unit.url, exc)
            if not by_sample or index % n_slots == slot:
                yield {"__key__": "", "__url__": unit.url, "__error__": str(exc)}
            index += 1


def shuffled(stream: Iterator[Any], buffer_size: int, generator: torch.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: keep ``buffer_size`` items, emit a random one per new item, then drain
    the rest in random order."""
    buffer: list[Any] = []
    for item in stream:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        k = int(torch.randint(0, buffer_size, (1,), generator=generator))
        buffer[k], item = item, buffer[k]
        yield item
    while buffer:
        k = int(torch.randint(0, len(buffer), (1,), generator=generator))
        buffer[k], buffer[-1] = buffer[-1], buffer[k]
        yield buffer.pop()


def slot_stream(
    units: Sequence[Unit],
    seed: int,
    slot: int,
    n_slots: int,
    shuffle_buffer: int,
    skip: int = 0,
    epochs: Optional[int] = None,
) -> Iterator[RawSample]:
    """Raw samples of one slot, epoch after epoch (endless when ``epochs`` is None), after dropping the
    first ``skip`` without decoding them (whole epochs without reading when counts are known)."""
    epoch, empty_epochs = 0, 0
    while epochs is None or epoch < epochs:
        mine, by_sample = _epoch_plan(units, seed, epoch, slot, n_slots)
        count = _known_count(mine, by_sample, slot, n_slots)
        if count and skip >= count:
            skip -= count
            epoch += 1
            continue
        stream = _read_units(mine, by_sample, slot, n_slots)
        if shuffle_buffer > 1:
            stream = shuffled(stream, shuffle_buffer, seeded_generator(seed, _SHUFFLE, slot, epoch))
        produced = 0
        for sample in stream:
            produced += 1
            if skip:
                skip -= 1
                continue
            yield sample
        empty_epochs = 0 if produced else empty_epochs + 1
        if empty_epochs >= _MAX_EMPTY_EPOCHS:
            raise SourceError(
                f"slot {slot}/{n_slots} read no sample in {_MAX_EMPTY_EPOCHS} epochs from {[u.url for u in mine][:5]}: "
                "the shards are empty"
            )
        epoch += 1


# ------------------------------------------------------------------------------------------------
# Training batches
# ------------------------------------------------------------------------------------------------


class TrainBatches(IterableDataset):
    """Collated batches of one (rank, worker); see the module docstring for the order guarantee."""

    def __init__(
        self,
        units: Sequence[Unit],
        transform: Callable[..., Any],
        collate_fn: Callable[..., Any],
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world_size: int,
        shuffle_buffer: int,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if start_batch < 0 or seed < 0 or num_workers < 0:
            raise ValueError(f"start_batch, seed and num_workers must be >= 0, got {start_batch}, {seed}, {num_workers}")
        self.units = list(units)
        self.transform = transform
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.start_batch = start_batch
        self._transform_takes_generator = _accepts_generator(transform)
        self._collate_takes_generator = _accepts_generator(collate_fn)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        n_workers = max(1, self.num_workers)
        physical = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)  # one core per worker: workers are the parallelism
        logical = (physical + self.start_batch) % n_workers
        batches_done = len(range(logical, self.start_batch, n_workers))
        stream = slot_stream(
            self.units,
            self.seed,
            slot=self.rank * n_workers + logical,
            n_slots=self.world_size * n_workers,
            shuffle_buffer=self.shuffle_buffer,
            skip=batches_done * self.batch_size,
        )
        batch_index = logical + batches_done * n_workers
        while True:
            raw = [next(stream) for _ in range(self.batch_size)]
            yield self.make_batch(raw, batch_index)
            batch_index += n_workers

    def _augment(self, image: torch.Tensor, generator: torch.Generator) -> Any:
        if self._transform_takes_generator:
            return self.transform(image, generator=generator)
        return self.transform(image)

    def make_batch(self, raw: list[RawSample], batch_index: int) -> dict[str, Any]:
        """Decode, augment and collate the raw samples of global batch ``batch_index``."""
        images: list[Optional[torch.Tensor]] = []
        for sample in raw:
            try:
                if "__error__" in sample:
                    raise ValueError(sample["__error__"])
                images.append(decode_image(image_bytes(sample)))
            except (ValueError, KeyError, OSError) as exc:
                logger.warning("skipping corrupt sample %r of %s: %s", sample.get("__key__"), sample.get("__url__"), exc)
                images.append(None)
        good = [p for p, img in enumerate(images) if img is not None]
        if not good:
            urls = sorted({s.get("__url__", "?") for s in raw})
            raise SourceError(f"every sample of batch {batch_index} is corrupt (from {urls[:5]})")
        samples = []
        for pos, image in enumerate(images):
            # A corrupt sample's slot takes the next good image of the batch, with its own randomness.
            donor = image if image is not None else images[next((p for p in good if p > pos), good[0])]
            generator = seeded_generator(self.seed, _AUGMENT, self.rank, batch_index, pos)
            samples.append(self._augment(donor, generator))
        mask_generator = seeded_generator(self.seed, _MASK, self.rank, batch_index)
        if self._collate_takes_generator:
            batch = self.collate_fn(samples, generator=mask_generator)
        else:
            batch = self.collate_fn(samples)
        if not isinstance(batch, dict):
            raise TypeError(f"collate_fn must return a dict (to carry 'skipped_samples'), got {type(batch).__name__}")
        batch["skipped_samples"] = len(raw) - len(good)
        return batch


def build_train_loader(
    source: Sequence[str] | str,
    transform: Callable[..., Any],
    collate_fn: Callable[..., Any],
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int,
    world_size: int,
    shuffle_buffer: int,
    start_batch: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """Endless DataLoader of collated batches; batch ``b`` is the same whatever ``start_batch`` the
    iteration started from (exact resume), for fixed source, seed, rank, world_size, num_workers.

    ``transform(uint8 CHW image, generator=...)`` and ``collate_fn(samples, generator=...)`` receive
    seeded generators when their signature has a ``generator`` parameter. Each batch also has
    ``"skipped_samples"``: the corrupt samples replaced in it. The source is checked here, so a
    pattern that matches nothing fails at start-up.
    """
    units = resolve_source(source)
    dataset = TrainBatches(
        units, transform, collate_fn, batch_size, num_workers, seed, rank, world_size, shuffle_buffer, start_batch
    )
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
    )


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


class EvalDataset(IterableDataset):
    """``(image, label, index)`` for every sample once, split over ranks and DataLoader workers."""

    def __init__(self, units: Sequence[Unit], transform: Optional[Callable[[torch.Tensor], Any]], rank: int,
                 world_size: int) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.units = list(units)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        counts = [u.num_samples for u in self.units]
        self.num_samples: Optional[int] = None if None in counts else sum(counts)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        n_slots = self.world_size * n_workers
        slot = self.rank * n_workers + worker
        index = 0
        for unit in self.units:
            for sample in read_unit(unit):
                mine = index % n_slots == slot
                index += 1
                if not mine:
                    continue
                try:
                    image = decode_image(image_bytes(sample))
                except (ValueError, KeyError, OSError) as exc:
                    logger.warning("skipping corrupt sample %r of %s: %s", sample.get("__key__"), unit.url, exc)
                    continue
                yield (self.transform(image) if self.transform is not None else image), sample_label(sample), index - 1


def build_eval_dataset(
    source: Sequence[str] | str,
    transform: Optional[Callable[[torch.Tensor], Any]],
    rank: int = 0,
    world_size: int = 1,
) -> EvalDataset:
    """Every sample of ``source`` exactly once (no shuffle, no resampling) as ``(image, label, index)``
    where ``index`` is the sample's position in the source; sample ``j`` goes to rank/worker slot
    ``j % (world_size * num_workers)``. Corrupt samples are skipped with a warning."""
    return EvalDataset(resolve_source(source), transform, rank, world_size)
