"""The training loader: an infinite, exactly resumable stream of collated batches.

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

A sample that cannot be used (undecodable, above the pixel or byte budget, failing augmentation) is still one
position of the stream: it is replaced by a fresh augmentation of another sample of its batch, and
counted in the batch's ``skipped_samples``; too many of them in a worker's recent window stop the run
(:class:`SkippedSampleWindow`). A damaged shard (cut short, unreadable) gives the samples before the
damage and is counted in the batch's ``damaged_shards``. So batch ``b`` depends
only on ``(source, seed, rank, world_size, num_workers, b)``: ``start_batch=k`` resumes exactly by
making physical worker ``i`` play logical worker ``(i + k) % W`` (the DataLoader asks worker 0 first),
skipping the samples of its batches before ``k`` without decoding them. Whole epochs are skipped
without reading when the shards' sample counts are known (index JSON from ``make_shards``).

Steps 1 and 2 (the sample order of a slot) are :mod:`dinolite.data.train_stream`; the once-through
evaluation dataset is :mod:`dinolite.data.eval_dataset`.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dinolite.data.budget import DEFAULT_MAX_SAMPLE_BYTES, DEFAULT_SHUFFLE_BUFFER_BYTES
from dinolite.data.decode import DEFAULT_MAX_IMAGE_PIXELS, decode_image
from dinolite.data.skip_window import (
    DEFAULT_MAX_SKIP_FRACTION,
    DEFAULT_SKIP_WINDOW,
    SkippedSampleWindow,
)
from dinolite.data.sources import RawSample, SourceError, Unit, image_bytes, resolve_source
from dinolite.data.train_stream import SEED_AUGMENT, SEED_MASK, seeded_generator, slot_stream

logger = logging.getLogger(__name__)


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
# Training batches
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderOptions:
    """How the training loader reads a source: one object per run and process
    (:func:`dinolite.train.batches.loader_options` builds it from the ``train`` and ``data`` config keys).

    ``batch_size`` images per batch of this process, which is ``rank`` of ``world_size``; ``num_workers``
    DataLoader worker processes (0: read in this process); ``seed`` fixes every permutation, shuffle and
    augmentation; ``shuffle_buffer`` samples mixed per slot (0 or 1: no shuffling). Budgets: images above
    ``max_image_pixels`` and samples above ``max_sample_bytes`` are skipped unread, the shuffle buffer holds
    at most ``shuffle_buffer_bytes``; more than ``max_skip_fraction`` skipped among a worker's last
    ``skip_window`` samples stops the run. ``pin_memory`` / ``prefetch_factor`` go to the DataLoader.
    """

    batch_size: int
    num_workers: int = 0
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    shuffle_buffer_bytes: int = DEFAULT_SHUFFLE_BUFFER_BYTES
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION
    skip_window: int = DEFAULT_SKIP_WINDOW
    pin_memory: bool = False
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.seed < 0 or self.num_workers < 0:
            raise ValueError(f"seed and num_workers must be >= 0, got {self.seed}, {self.num_workers}")
        if min(self.max_image_pixels, self.max_sample_bytes, self.shuffle_buffer_bytes) < 1:
            raise ValueError(
                "max_image_pixels, max_sample_bytes and shuffle_buffer_bytes must be >= 1, got "
                f"{self.max_image_pixels}, {self.max_sample_bytes}, {self.shuffle_buffer_bytes}"
            )


class TrainBatches(IterableDataset):
    """Collated batches of one (rank, worker); see the module docstring for the order guarantee."""

    def __init__(
        self,
        units: Sequence[Unit],
        transform: Callable[..., Any],
        collate_fn: Callable[..., Any],
        options: LoaderOptions,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.units = list(units)
        self.transform = transform
        self.collate_fn = collate_fn
        self.options = options
        self.start_batch = start_batch
        self._transform_takes_generator = _accepts_generator(transform)
        self._collate_takes_generator = _accepts_generator(collate_fn)
        # Per-worker state (each DataLoader worker holds its own copy of this object); reset by __iter__.
        self._skips = SkippedSampleWindow(options.max_skip_fraction, options.skip_window, f"rank {options.rank}")
        self._damage: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        opts = self.options
        n_workers = max(1, opts.num_workers)
        physical = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)  # one core per worker: workers are the parallelism
        logical = (physical + self.start_batch) % n_workers
        batches_done = len(range(logical, self.start_batch, n_workers))
        self._skips = SkippedSampleWindow(
            self._skips.max_fraction, self._skips.size, f"data worker {physical} of rank {opts.rank}"
        )
        self._damage = []
        stream = slot_stream(
            self.units,
            opts.seed,
            slot=opts.rank * n_workers + logical,
            n_slots=opts.world_size * n_workers,
            shuffle_buffer=opts.shuffle_buffer,
            skip=batches_done * opts.batch_size,
            damage=self._damage,
            max_sample_bytes=opts.max_sample_bytes,
            shuffle_buffer_bytes=opts.shuffle_buffer_bytes,
        )
        batch_index = logical + batches_done * n_workers
        while True:
            raw = [next(stream) for _ in range(opts.batch_size)]
            yield self.make_batch(raw, batch_index)
            batch_index += n_workers

    def _augment(self, image: torch.Tensor, batch_index: int, pos: int) -> Any:
        """Augment ``image`` for position ``pos`` of batch ``batch_index`` (its own seeded generator)."""
        if self._transform_takes_generator:
            generator = seeded_generator(self.options.seed, SEED_AUGMENT, self.options.rank, batch_index, pos)
            return self.transform(image, generator=generator)
        return self.transform(image)

    def make_batch(self, raw: list[RawSample], batch_index: int) -> dict[str, Any]:
        """Decode, augment and collate the raw samples of global batch ``batch_index``.

        Every per-sample failure (no image member, undecodable, above the pixel limit or the byte budget,
        a mode the conversion rejects, an augmentation error) takes the same path: a warning naming the shard and
        key, a count in ``skipped_samples``, and the position refilled with a fresh augmentation (its own
        generator) of the next usable image of the batch. So a bad file never stops the run, and a resume
        builds the same batch again.
        """
        images: list[Optional[torch.Tensor]] = []
        samples: list[Any] = []
        failures: dict[int, str] = {}
        for pos, sample in enumerate(raw):
            try:
                image = decode_image(image_bytes(sample), self.options.max_image_pixels)
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
        mask_generator = seeded_generator(self.options.seed, SEED_MASK, self.options.rank, batch_index)
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
    options: LoaderOptions,
    start_batch: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Endless DataLoader of collated batches; batch ``b`` is the same whatever ``start_batch`` the
    iteration started from (exact resume), for fixed source and ``options`` (seed, rank, world size,
    workers, ...).

    ``transform(uint8 CHW image, generator=...)`` and ``collate_fn(samples, generator=...)`` receive
    seeded generators when their signature has a ``generator`` parameter. Each batch also has
    ``"skipped_samples"`` (the unusable samples replaced in it) and ``"damaged_shards"`` (shards found
    cut or unreadable while filling it). The budgets of ``options`` apply (:class:`LoaderOptions`); too
    many skipped samples raise :class:`~dinolite.data.skip_window.TooManySkippedSamplesError`.
    ``worker_init_fn`` runs in each worker (the trainer passes one that ignores its stop signals). The
    source is checked here, so a pattern that matches nothing fails at start-up.
    """
    dataset = TrainBatches(resolve_source(source), transform, collate_fn, options, start_batch)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=options.num_workers,
        pin_memory=options.pin_memory,
        prefetch_factor=options.prefetch_factor if options.num_workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=worker_init_fn,
    )
