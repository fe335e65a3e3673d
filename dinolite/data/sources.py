"""Where samples come from: shard patterns or an image folder, resolved to a list of read units.

A *unit* is one tar shard (local path or ``pipe:`` command) or one image file of a folder. Units are
what the loader permutes and splits across ranks and workers. Reading a unit yields raw samples
(``dict`` of encoded bytes, never decoded here) in the webdataset layout: tar members ``KEY.EXT`` are
grouped by KEY (the member path up to the first dot of its file name).

We read tars with the standard library rather than through webdataset's pipeline: the loader needs
full control of ordering, splitting and skipping for exact resume, and a plain generator over
``tarfile`` in stream mode gives that in a few lines with no hidden state.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import lzma
import os
import re
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from dinolite.data.budget import (
    DEFAULT_MAX_SAMPLE_BYTES,
    MAX_INDEX_JSON_BYTES,
    MAX_TAR_HEADER_BYTES,
    TAR_HEADER_BLOCK,
    InputTooLargeError,
    NotARegularFileError,
    read_file_capped,
)
from dinolite.data.errors import SourceError
from dinolite.data.folders import (
    IMAGE_EXTENSIONS,
    SHARD_SUFFIXES,
    describe_folder,
    folder_images,
    folder_shards,
    is_shard_file,
)
from dinolite.data.samples import IMAGE_KEYS, LabelError, RawSample, image_bytes, sample_label
from dinolite.data.tar_streams import decompressed_stream, member_over_budget, skip_member_data

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_KEYS",
    "SHARD_SUFFIXES",
    "DamagedShardError",
    "LabelError",
    "RawSample",
    "SourceError",
    "Unit",
    "brace_expand",
    "folder_images",
    "image_bytes",
    "read_tar",
    "read_unit",
    "resolve_source",
    "sample_label",
]


logger = logging.getLogger(__name__)

# deflate's largest expansion (zlib's technical notes: 1032 to 1, for a long run of one byte)
DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class Unit:
    """One shard, or one image file of a folder (``label`` from its class subfolder, -1 if none)."""

    url: str
    is_shard: bool
    num_samples: Optional[int] = None  # known for files (1) and for shards listed in an index JSON
    label: int = -1
    key: str = ""
    # What the index JSON lists, even when its byte size no longer matches the file (then
    # ``num_samples`` is None): only used to say how many samples a damaged shard lost.
    listed_samples: Optional[int] = None


# ------------------------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------------------------

_BRACE = re.compile(r"\{([^{}]*)\}")


def brace_expand(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..012}`` numeric ranges (zero padding kept), left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    range_match = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if range_match:
        lo_txt, hi_txt = range_match.groups()
        lo, hi = int(lo_txt), int(hi_txt)
        if hi < lo:
            raise SourceError(f"brace range {{{body}}} in {pattern!r} goes downwards")
        width = len(lo_txt) if lo_txt.startswith("0") and len(lo_txt) > 1 else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for choice in choices for expanded in brace_expand(head + choice + tail)]


def _shard_counts(
    directory: str, cache: dict[str, dict[str, tuple[int, Optional[int]]]]
) -> dict[str, tuple[int, Optional[int]]]:
    """``{shard name: (samples, bytes or None)}`` from the index JSON files ``make_shards`` leaves next to shards."""
    if directory not in cache:
        counts: dict[str, tuple[int, Optional[int]]] = {}
        for index_path in glob.glob(os.path.join(glob.escape(directory), "*index.json")):
            try:
                index = json.loads(read_file_capped(index_path, MAX_INDEX_JSON_BYTES, "index JSON files"))
                for shard in index.get("shards", []):
                    size = shard.get("bytes")
                    counts[shard["name"]] = (int(shard["samples"]), None if size is None else int(size))
            except (InputTooLargeError, NotARegularFileError) as exc:
                logger.warning("%s: the shards' sample counts will be read from the shards", exc)
                continue
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
                continue  # not ours, or damaged: fall back to reading the shards
        cache[directory] = counts
    return cache[directory]


def _shard_unit(path: str, counts: dict[str, tuple[int, Optional[int]]]) -> Unit:
    """A shard unit whose sample count is trusted only if its index entry's byte size (when the index
    has one) still matches the file: a shard cut after indexing must be read, not skipped by count."""
    listed = counts.get(os.path.basename(path))
    if listed is None:
        return Unit(url=path, is_shard=True)
    samples, size = listed
    actual = os.path.getsize(path)
    # Every sample takes at least one header block of the tar; a gzip'd tar holds at most
    # DEFLATE_MAX_RATIO times its size.
    tar_bytes = actual * (DEFLATE_MAX_RATIO if path.lower().endswith((".gz", ".tgz")) else 1)
    if not 0 <= samples <= tar_bytes // TAR_HEADER_BLOCK:
        logger.warning(
            "shard %r: its index JSON lists %d samples, impossible for %d bytes (at most one per %d-byte tar "
            "header, %d bytes once decompressed); the count is not trusted, the shard will be read",
            path,
            samples,
            actual,
            TAR_HEADER_BLOCK,
            tar_bytes,
        )
        return Unit(url=path, is_shard=True)
    if size is not None and actual != size:
        logger.warning(
            "shard %r is %d bytes but its index JSON says %d: damaged or rewritten since indexing; its sample "
            "count (%d) is not trusted, the shard will be read",
            path,
            os.path.getsize(path),
            size,
            samples,
        )
        return Unit(url=path, is_shard=True, listed_samples=samples)
    return Unit(url=path, is_shard=True, num_samples=samples, listed_samples=samples)


def resolve_source(source: list[str] | tuple[str, ...] | str) -> list[Unit]:
    """Turn shard patterns / an image folder into read units. Errors name the pattern at fault.

    Each entry may be: a ``pipe:COMMAND`` (brace-expanded, not checked until read), a shard path or
    glob (brace-expanded), a directory holding ``*.tar`` shards, or an image folder (the only entry).
    """
    if isinstance(source, (str, os.PathLike)):
        source = [str(source)]
    if not source:
        raise SourceError(
            "data source is empty: give shard patterns (e.g. 'data/shard-{000000..000009}.tar') or an image folder"
        )
    units: list[Unit] = []
    count_cache: dict[str, dict[str, tuple[int, Optional[int]]]] = {}
    for pattern in source:
        pattern = str(pattern)
        if pattern.startswith("pipe:"):
            units.extend(Unit(url=u, is_shard=True) for u in brace_expand(pattern))
            continue
        if os.path.isdir(pattern):
            try:
                shards = folder_shards(pattern)
            except ValueError as exc:
                raise SourceError(str(exc)) from None
            if shards:
                paths = shards
            else:
                files, labels, _ = folder_images(Path(pattern))
                if not files:
                    raise SourceError(
                        f"folder {pattern!r} holds no shards ({', '.join(SHARD_SUFFIXES)}) and no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}, also in subfolders): {describe_folder(pattern)}"
                    )
                units.extend(
                    Unit(url=f, is_shard=False, num_samples=1, label=lab, key=os.path.relpath(f, pattern))
                    for f, lab in zip(files, labels)
                )
                continue
        else:
            paths = []
            for expanded in brace_expand(pattern):
                if any(ch in expanded for ch in "*?["):
                    paths.extend(sorted(glob.glob(expanded)))
                elif os.path.exists(expanded):
                    paths.append(expanded)
            if not paths:
                raise SourceError(f"data source pattern {pattern!r} matches no file")
        for path in paths:
            if not (is_shard_file(path) and os.path.isfile(path)):
                raise SourceError(f"{path!r} (from {pattern!r}) is not a shard file ({', '.join(SHARD_SUFFIXES)})")
            units.append(_shard_unit(path, _shard_counts(os.path.dirname(path), count_cache)))
    if not units:
        raise SourceError(f"data source {list(source)} gives an empty shard set")
    return units


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _split_member_name(name: str) -> tuple[str, str]:
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return os.path.join(directory, stem) if directory else stem, ext.lower() if dot else ""


def _open_stream(url: str):
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE)
        return proc.stdout, proc
    return open(url, "rb"), None


class DamagedShardError(SourceError):
    """A shard that ended before its end-of-archive marker (cut, or a damaged header); the samples
    before the damage were delivered. The message names the shard, how far it got and what was lost."""

    def __init__(self, url: str, samples_read: int, expected: Optional[int], reason: str) -> None:
        if expected is not None:
            lost = f"{max(expected - samples_read, 0)} of its {expected} samples (per its index JSON) are lost"
        else:
            lost = "the rest of the shard is lost (how many samples: unknown, no index JSON lists it)"
        super().__init__(f"shard {url!r} is damaged after {samples_read} samples: {reason}; {lost}")
        self.url = url
        self.samples_read = samples_read
        self.expected = expected


def _end_recording_tarinfo(end: list[str]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records why ``tarfile`` stopped reading headers.

    In stream mode ``tarfile`` ends its iteration *silently* when the file stops at a header boundary,
    inside a header or at a damaged header (after the first member); only a zero block is a real
    end-of-archive marker. Recording which of these happened is what tells a cut shard from a whole one.
    """

    class EndRecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(archive)
            except tarfile.EOFHeaderError:
                end.append("")  # a zero block: the end-of-archive marker
                raise
            except tarfile.EmptyHeaderError:
                end.append(
                    f"the file stops at byte {archive.offset} without an end-of-archive marker (cut between members)"
                )
                raise
            except tarfile.TruncatedHeaderError:
                end.append(f"the file stops inside the member header at byte {archive.offset}")
                raise
            except tarfile.InvalidHeaderError as exc:
                end.append(f"damaged member header at byte {archive.offset} ({exc})")
                raise

        # tarfile reads a pax extended header or a GNU long name whole before it yields the member; a
        # header that declares gigabytes (a few KB gzipped) is a damaged shard, not read.
        def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            self._check_header_size()
            return super()._proc_pax(archive)

        def _proc_gnulong(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
            self._check_header_size()
            return super()._proc_gnulong(archive)

        def _check_header_size(self) -> None:
            if self.size > MAX_TAR_HEADER_BYTES:
                raise tarfile.InvalidHeaderError(
                    f"an extended header (type {self.type!r}) of {self.size:,} bytes, above the limit of "
                    f"{MAX_TAR_HEADER_BYTES:,} bytes; not read"
                )

    return EndRecordingTarInfo


def read_tar(
    url: str, expected_samples: Optional[int] = None, max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
) -> Iterator[RawSample]:
    """Samples of one tar shard in file order; members sharing a key form one sample.

    A shard cut short (between members, inside a header or inside a member's data), a damaged header
    or an unreadable compressed stream raises :class:`DamagedShardError` *after* yielding every sample
    read before the damage (the last one with the members that were read whole). ``expected_samples``
    (from the index JSON) lets the message say how many samples were lost.

    Memory is bounded whatever the shard holds: a sample whose members together exceed
    ``max_sample_bytes`` (decompressed, judged from each member's header before its data is read) is
    yielded with an ``"__error__"`` instead of the members that do not fit, which are skipped by
    streaming through them; extended headers above ``MAX_TAR_HEADER_BYTES`` end the shard as damaged.
    """
    stream, proc = _open_stream(url)
    completed = False
    end: list[str] = []
    current: RawSample = {}
    sample_bytes = 0
    samples_read = 0
    try:
        try:
            with tarfile.open(
                fileobj=decompressed_stream(stream), mode="r|", tarinfo=_end_recording_tarinfo(end)
            ) as archive:
                while (member := archive.next()) is not None:
                    # In stream mode tarfile keeps every header it read: millions of empty members (a few
                    # hundred KB gzipped) would grow that list without bound. Nothing here looks back.
                    archive.members.clear()
                    if not member.isfile():
                        skip_member_data(archive)
                        continue
                    key, ext = _split_member_name(member.name)
                    if current and current["__key__"] != key:
                        samples_read += 1
                        yield current
                        current = {}
                    if not current:
                        current, sample_bytes = {"__key__": key, "__url__": url}, 0
                    refused = "__error__" in current or member_over_budget(member, sample_bytes, max_sample_bytes)
                    if refused:
                        current.setdefault("__error__", refused)
                        skip_member_data(archive)
                        continue
                    sample_bytes += TAR_HEADER_BLOCK + member.size
                    extracted = archive.extractfile(member)
                    current[ext] = extracted.read() if extracted is not None else b""
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError) as exc:
            end.append(f"reading stopped with {type(exc).__name__}: {exc}")
        if len(current) > 2:  # members read whole before the end or the damage
            samples_read += 1
            yield current
        if end and end[-1]:
            reason = end[-1]
            if proc is not None:
                stream.close()  # first: a command still writing must not block our wait
                if proc.wait() > 0:  # < 0: killed by a signal, e.g. SIGPIPE from our close
                    reason += f"; the command exited with status {proc.returncode}"
            raise DamagedShardError(url, samples_read, expected_samples, reason)
        completed = True
    finally:
        stream.close()
        if proc is not None:
            status = proc.wait()
            # A consumer that stops early closes the pipe; only a finished read judges the command.
            if completed and status != 0:
                raise SourceError(f"shard command {url!r} exited with status {status}")


def read_unit(unit: Unit, max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES) -> Iterator[RawSample]:
    """Raw samples of a unit: a shard's samples, or the one image of a folder file.

    A folder file above ``max_sample_bytes`` or not a regular file is not read: its sample carries an
    ``"__error__"`` (skipped and counted by the loader like any unusable sample)."""
    if unit.is_shard:
        yield from read_tar(unit.url, unit.listed_samples, max_sample_bytes)
        return
    ext = os.path.splitext(unit.url)[1].lower().lstrip(".")
    sample: RawSample = {"__key__": unit.key or unit.url, "__url__": unit.url}
    try:
        sample[ext] = read_file_capped(unit.url, max_sample_bytes, "data.max_sample_bytes")
    except (InputTooLargeError, NotARegularFileError) as exc:
        sample["__error__"] = str(exc)
    if unit.label >= 0:
        sample["cls"] = str(unit.label).encode()
    yield sample
