"""The training stream's sample order: which slot reads which samples in which epoch, the shuffle
buffer, and skipping the samples of batches before a resume point without decoding them.

A slot is one (rank, DataLoader worker) pair; steps 1 and 2 of the order guarantee in
:mod:`dinolite.data.loader` are implemented here, the batching (step 3) is the loader's
:class:`~dinolite.data.loader.TrainBatches`. Damaged shards give the samples before the damage and are
reported, never raised, so a week-long run survives a cut shard.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from dinolite.data.budget import DEFAULT_MAX_SAMPLE_BYTES, DEFAULT_SHUFFLE_BUFFER_BYTES
from dinolite.data.sources import RawSample, SourceError, Unit, read_unit

logger = logging.getLogger(__name__)

# Purposes mixed into derived seeds, so that the order, shuffle, augmentation and mask streams of the
# same (seed, slot, ...) are independent.
SEED_ORDER, SEED_SHUFFLE, SEED_AUGMENT, SEED_MASK = 1, 2, 3, 4
_MAX_EMPTY_EPOCHS = 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that mixes all ``parts`` (non-negative ints) through numpy's SeedSequence."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def _epoch_plan(units: Sequence[Unit], seed: int, epoch: int, slot: int, n_slots: int) -> tuple[list[Unit], bool]:
    """Units slot ``slot`` reads in ``epoch`` and whether it keeps every ``n_slots``-th sample only."""
    order = torch.randperm(len(units), generator=seeded_generator(seed, SEED_ORDER, epoch)).tolist()
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
    units: Sequence[Unit],
    by_sample: bool,
    slot: int,
    n_slots: int,
    damage: Optional[list[str]] = None,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
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
            for sample in read_unit(unit, max_sample_bytes):
                if not by_sample or index % n_slots == slot:
                    yield sample
                index += 1
        except (SourceError, OSError) as exc:
            if not by_sample or index % n_slots == slot:
                logger.warning("%s", exc)
                if damage is not None:
                    damage.append(str(exc))


def raw_sample_bytes(sample: RawSample) -> int:
    """The bytes a raw sample holds (its members' data)."""
    return sum(len(value) for value in sample.values() if isinstance(value, bytes))


def shuffled(
    stream: Iterator[Any],
    buffer_size: int,
    generator: torch.Generator,
    max_bytes: Optional[int] = None,
    size_of: Callable[[Any], int] = raw_sample_bytes,
) -> Iterator[Any]:
    """Reservoir-style shuffle: keep ``buffer_size`` items, emit a random one per new item, then drain
    the rest in random order.

    With ``max_bytes``, the buffer and the item coming in hold at most that many bytes together
    (``size_of`` each; an item larger than that alone passes through an empty buffer): before an item that
    would not fit, random items are emitted until it does.
    Until that budget is reached the order (and the generator's draws) are those of the count-only
    buffer, so a stream that never reaches it is shuffled exactly as before the budget existed.
    """
    buffer: list[Any] = []
    held = 0
    warned = False
    for item in stream:
        size = size_of(item) if max_bytes is not None else 0
        while buffer and max_bytes is not None and held + size > max_bytes:
            if not warned:
                warned = True
                logger.warning(
                    "the shuffle buffer reached data.shuffle_buffer_bytes=%d bytes with %d of its %d samples: it "
                    "holds fewer samples while they are this large",
                    max_bytes,
                    len(buffer),
                    buffer_size,
                )
            k = int(torch.randint(0, len(buffer), (1,), generator=generator))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            out = buffer.pop()
            held -= size_of(out)
            yield out
        if len(buffer) < buffer_size:
            buffer.append(item)
            held += size
            continue
        k = int(torch.randint(0, buffer_size, (1,), generator=generator))
        buffer[k], item = item, buffer[k]
        held += size - (size_of(item) if max_bytes is not None else 0)
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
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    shuffle_buffer_bytes: int = DEFAULT_SHUFFLE_BUFFER_BYTES,
) -> Iterator[RawSample]:
    """Raw samples of one slot, epoch after epoch (endless when ``epochs`` is None), after dropping the
    first ``skip`` without decoding them (whole epochs without reading when counts are known).
    Damaged shards are reported into ``damage`` (see :func:`_read_units`); samples above
    ``max_sample_bytes`` come unread, with an ``"__error__"``; the shuffle buffer holds at most
    ``shuffle_buffer`` samples and ``shuffle_buffer_bytes`` bytes."""
    damage = [] if damage is None else damage
    epoch, empty_epochs = 0, 0
    while epochs is None or epoch < epochs:
        mine, by_sample = _epoch_plan(units, seed, epoch, slot, n_slots)
        count = _known_count(mine, by_sample, slot, n_slots)
        if count and skip >= count:
            skip -= count
            epoch += 1
            continue
        stream = _read_units(mine, by_sample, slot, n_slots, damage, max_sample_bytes)
        if shuffle_buffer > 1:
            generator = seeded_generator(seed, SEED_SHUFFLE, slot, epoch)
            stream = shuffled(stream, shuffle_buffer, generator, max_bytes=shuffle_buffer_bytes)
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
