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

A sample that cannot be used (undecodable, above the pixel limit, failing augmentation) is still one
position of the stream: it is replaced by a fresh augmentation of another sample of its batch, and
counted in the batch's ``skipped_samples``; too many of them in a worker's recent window stop the run
(:class:`SkippedSampleWindow`). A damaged shard (cut short, unreadable) gives the samples before the
damage and is counted in the batch's ``damaged_shards``. So batch ``b`` depends
only on ``(source, seed, rank, world_size, num_workers, b)``: ``start_batch=k`` resumes exactly by
making physical worker ``i`` play logical worker ``(i + k) % W`` (the DataLoader asks worker 0 first),
skipping the samples of its batches before ``k`` without decoding them. Whole epochs are skipped
without reading when the shards' sample counts are known (index JSON from ``make_shards``).

Eval dataset (``build_eval_dataset``): every sample once, in source order, sample ``j`` going to slot
``j % S`` (ranks x DataLoader workers), as ``(image, label, j)``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dinolite.data.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from dinolite.data.skip_window import (
    DEFAULT_MAX_SKIP_FRACTION,
    DEFAULT_SKIP_WINDOW,
    SkippedSampleWindow,
)
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


def _read_units(
    units: Sequence[Unit], by_sample: bool, slot: int, n_slots: int, damage: Optional[list[str]] = None
) -> Iterator[RawSample]:
    """Raw samples of ``units`` (every ``n_slots``-th from ``slot`` when ``by_sample``).

    A damaged or unreadable shard (cut short, bad header, missing file, failed ``pipe:`` command) gives
    the samples read before the damage; the rest of it is lost. That is logged as a warning naming the
    shard and what was lost, and appended to ``damage`` (the batches report the count as
    ``damaged_shards``), instead of stopping a week-long run. When every slot reads every unit
    (``by_sample``), only the slot whose turn it was reports it, so the count is per shard, not per slot.
    """
    index = 0
    for unit in units:
        try:
            for sample in read_unit(unit):
                if not by_sample or index % n_slots == slot:
                    yield sample
                index += 1
        except (SourceError, OSError) as exc:
            if not by_sample or index % n_slots == slot:
                logger.warning("%s", exc)
                if damage is not None:
                    damage.append(str(exc))


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
    damage: Optional[list[str]] = None,
) -> Iterator[RawSample]:
    """Raw samples of one slot, epoch after epoch (endless when ``epochs`` is None), after dropping the
    first ``skip`` without decoding them (whole epochs without reading when counts are known).
    Damaged shards are reported into ``damage`` (see :func:`_read_units`)."""
    damage = [] if damage is None else damage
    epoch, empty_epochs = 0, 0
    while epochs is None or epoch < epochs:
        mine, by_sample = _epoch_plan(units, seed, epoch, slot, n_slots)
        count = _known_count(mine, by_sample, slot, n_slots)
        if count and skip >= count:
            skip -= count
            epoch += 1
            continue
        stream = _read_units(mine, by_sample, slot, n_slots, damage)
        if shuffle_buffer > 1:
            stream = shuffled(stream, shuffle_buffer, seeded_generator(seed, _SHUFFLE, slot, epoch))
        produced = 0
        for sample in stream:
            produced += 1
            if skip:
                skip -= 1
                if not skip:
                    # Damage found while reading the skipped samples was reported by the batches before
                    # the resume point; what is found from the next read on belongs to the batches after.
                    damage.clear()
                continue
            yield sample
        empty_epochs = 0 if produced else empty_epochs + 1
        if empty_epochs >= _MAX_EMPTY_EPOCHS:
            raise SourceError(
                f"slot {slot}/{n_slots} read no sample in {_MAX_EMPTY_EPOCHS} epochs from {[u.url for u in mine][:5]}: "
                + (f"the shards are damaged ({damage[-1]})" if damage else "the shards are empty")
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
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
        skip_window: int = DEFAULT_SKIP_WINDOW,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if start_batch < 0 or seed < 0 or num_workers < 0:
            raise ValueError(
                f"start_batch, seed and num_workers must be >= 0, got {start_batch}, {seed}, {num_workers}"
            )
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {max_image_pixels}")
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
        self.max_image_pixels = max_image_pixels
        self._transform_takes_generator = _accepts_generator(transform)
        self._collate_takes_generator = _accepts_generator(collate_fn)
        # Per-worker state (each DataLoader worker holds its own copy of this object); reset by __iter__.
        self._skips = SkippedSampleWindow(max_skip_fraction, skip_window, f"rank {rank}")
        self._damage: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        n_workers = max(1, self.num_workers)
        physical = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)  # one core per worker: workers are the parallelism
        logical = (physical + self.start_batch) % n_workers
        batches_done = len(range(logical, self.start_batch, n_workers))
        self._skips = SkippedSampleWindow(
            self._skips.max_fraction, self._skips.size, f"data worker {physical} of rank {self.rank}"
        )
        self._damage = []
        stream = slot_stream(
            self.units,
            self.seed,
            slot=self.rank * n_workers + logical,
            n_slots=self.world_size * n_workers,
            shuffle_buffer=self.shuffle_buffer,
            skip=batches_done * self.batch_size,
            damage=self._damage,
        )
        batch_index = logical + batches_done * n_workers
        while True:
            raw = [next(stream) for _ in range(self.batch_size)]
            yield self.make_batch(raw, batch_index)
            batch_index += n_workers

    def _augment(self, image: torch.Tensor, batch_index: int, pos: int) -> Any:
        """Augment ``image`` for position ``pos`` of batch ``batch_index`` (its own seeded generator)."""
        if self._transform_takes_generator:
            generator = seeded_generator(self.seed, _AUGMENT, self.rank, batch_index, pos)
            return self.transform(image, generator=generator)
        return self.transform(image)

    def make_batch(self, raw: list[RawSample], batch_index: int) -> dict[str, Any]:
        """Decode, augment and collate the raw samples of global batch ``batch_index``.

        Every per-sample failure (no image member, undecodable, above the pixel limit, a mode the
        conversion rejects, an augmentation error) takes the same path: a warning naming the shard and
        key, a count in ``skipped_samples``, and the position refilled with a fresh augmentation (its own
        generator) of the next usable image of the batch. So a bad file never stops the run, and a resume
        builds the same batch again.
        """
        images: list[Optional[torch.Tensor]] = []
        samples: list[Any] = []
        failures: dict[int, str] = {}
        for pos, sample in enumerate(raw):
            try:
                image = decode_image(image_bytes(sample), self.max_image_pixels)
                samples.append(self._augment(image, batch_index, pos))
                images.append(image)
            except Exception as exc:  # any per-sample failure, whatever the decoder or transform raises
                failures[pos] = f"{sample.get('__url__')} key {sample.get('__key__')!r}: {type(exc).__name__}: {exc}"
                logger.warning("skipping sample %s", failures[pos])
                images.append(None)
                samples.append(None)
            self._skips.add(pos in failures, failures.get(pos, ""))
        good = [p for p, img in enumerate(images) if img is not None]
        for pos in failures:
            # The next usable image of the batch (wrapping around), augmented with this position's generator.
            for donor in [p for p in good if p > pos] + [p for p in good if p < pos]:
                try:
                    samples[pos] = self._augment(images[donor], batch_index, pos)
                    break
                except Exception:  # this crop of the donor failed too: try the next one
                    continue
            else:
                raise SourceError(
                    f"no sample of batch {batch_index} could be used ({len(failures)} of {len(raw)} failed); "
                    f"first failure: {next(iter(failures.values()))}"
                )
        mask_generator = seeded_generator(self.seed, _MASK, self.rank, batch_index)
        if self._collate_takes_generator:
            batch = self.collate_fn(samples, generator=mask_generator)
        else:
            batch = self.collate_fn(samples)
        if not isinstance(batch, dict):
            raise TypeError(f"collate_fn must return a dict (to carry 'skipped_samples'), got {type(batch).__name__}")
        batch["skipped_samples"] = len(failures)
        batch["damaged_shards"] = len(self._damage)
        self._damage.clear()
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
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
    skip_window: int = DEFAULT_SKIP_WINDOW,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Endless DataLoader of collated batches; batch ``b`` is the same whatever ``start_batch`` the
    iteration started from (exact resume), for fixed source, seed, rank, world_size, num_workers.

    ``transform(uint8 CHW image, generator=...)`` and ``collate_fn(samples, generator=...)`` receive
    seeded generators when their signature has a ``generator`` parameter. Each batch also has
    ``"skipped_samples"`` (the unusable samples replaced in it) and ``"damaged_shards"`` (shards found
    cut or unreadable while filling it). Images above ``max_image_pixels`` are skipped before decoding;
    more than ``max_skip_fraction`` skipped among a worker's last ``skip_window`` samples raises
    :class:`~dinolite.data.skip_window.TooManySkippedSamplesError`. The source is checked here, so a pattern that matches nothing
    fails at start-up.
    """
    units = resolve_source(source)
    dataset = TrainBatches(
        units,
        transform,
        collate_fn,
        batch_size,
        num_workers,
        seed,
        rank,
        world_size,
        shuffle_buffer,
        start_batch,
        max_image_pixels=max_image_pixels,
        max_skip_fraction=max_skip_fraction,
        skip_window=skip_window,
    )
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn,  # the trainer passes one that ignores its stop signals
    )


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------


class EvalDataset(IterableDataset):
    """``(image, label, index)`` for every sample once, split over ranks and DataLoader workers."""

    def __init__(
        self,
        units: Sequence[Unit],
        transform: Optional[Callable[[torch.Tensor], Any]],
        rank: int,
        world_size: int,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.units = list(units)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.max_image_pixels = max_image_pixels
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
            try:
                for sample in read_unit(unit):
                    mine = index % n_slots == slot
                    index += 1
                    if not mine:
                        continue
                    try:
                        image = decode_image(image_bytes(sample), self.max_image_pixels)
                        item = self.transform(image) if self.transform is not None else image
                    except Exception as exc:  # any per-sample failure: decoding, conversion, transform
                        logger.warning(
                            "skipping sample %s key %r: %s: %s",
                            unit.url,
                            sample.get("__key__"),
                            type(exc).__name__,
                            exc,
                        )
                        continue
                    yield item, sample_label(sample), index - 1
            except (SourceError, OSError) as exc:  # damaged shard: its samples up to the damage were used
                if index % n_slots == slot:  # one slot reports it
                    logger.warning("%s", exc)


def build_eval_dataset(
    source: Sequence[str] | str,
    transform: Optional[Callable[[torch.Tensor], Any]],
    rank: int = 0,
    world_size: int = 1,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> EvalDataset:
    """Every sample of ``source`` exactly once (no shuffle, no resampling) as ``(image, label, index)``
    where ``index`` is the sample's position in the source; sample ``j`` goes to rank/worker slot
    ``j % (world_size * num_workers)``. Unusable samples (undecodable, above ``max_image_pixels``, failing
    the transform) are skipped with a warning naming shard and key; a damaged shard gives the samples
    before the damage and a warning."""
    return EvalDataset(resolve_source(source), transform, rank, world_size, max_image_pixels)
