"""One raw sample of a source (encoded members, nothing decoded): its image member and its label."""

from __future__ import annotations

import re

from dinolite.data.budget import InputTooLargeError
from dinolite.data.errors import SourceError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "image", "img")
# A class index is a non-negative integer that fits the int64 label tensors.
_LABEL = re.compile(r"[0-9]{1,19}")
_MAX_LABEL = 2**63 - 1

# {"__key__": str, "__url__": str, ext: bytes, ...}; "__error__": why the sample cannot be used (a
# member over the byte budget, left unread), raised by image_bytes on the loader's skip-and-count path.
RawSample = dict


def image_bytes(sample: RawSample) -> bytes:
    """The encoded image of a raw sample (first of jpg/jpeg/png/webp/bmp/image).

    Raises :class:`~dinolite.data.budget.InputTooLargeError` for a sample left unread because of its
    size, ``KeyError`` for one without an image member."""
    if "__error__" in sample:
        raise InputTooLargeError(sample["__error__"])
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    raise KeyError(
        f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r} has no image "
        f"(members: {sorted(k for k in sample if not k.startswith('__'))})"
    )


class LabelError(SourceError):
    """A ``cls`` member that is not a class index; the message names the shard, the key and the value."""


def sample_label(sample: RawSample) -> int:
    """The integer ``cls`` of a raw sample (ASCII digits, surrounding whitespace allowed), -1 when it has
    none. Anything else (``cat``, ``-3``, ``1.5``, ``1_000``, a number beyond int64) raises
    :class:`LabelError`: labels are ground truth, so a bad one stops an evaluation rather than being
    skipped or guessed."""
    raw = sample.get("cls")
    if not raw:
        return -1
    text = raw.strip()
    if _LABEL.fullmatch(text.decode("ascii", "replace")) and int(text) <= _MAX_LABEL:
        return int(text)
    shown = raw[:40].decode("utf-8", "replace") + ("..." if len(raw) > 40 else "")
    raise LabelError(
        f"shard {sample.get('__url__')!r} key {sample.get('__key__')!r}: member '{sample.get('__key__')}.cls' holds "
        f"{shown!r} ({len(raw)} bytes), not a class index (a non-negative integer below 2**63)"
    )
