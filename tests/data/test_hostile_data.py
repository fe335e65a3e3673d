"""Hostile inputs on the data path (issue 24, items 4 and 7): every case tried is one row of CASES, the
input's builder (``tests/data/hostile_inputs.py``) and what must happen; the next case is a line.

Memory blow-ups are asserted by the budget's refusal and, where reading is what allocated, by a
tracemalloc peak that the unbounded reader exceeded; nothing here allocates more than a few MB.
"""

from __future__ import annotations

import logging
import re
import signal
import tarfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
from PIL import EpsImagePlugin, ImageFile

from dinolite.data import decode as decode_module
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.loader import LoaderOptions, build_train_loader
from dinolite.data.sources import DamagedShardError, SourceError, read_unit, resolve_source
from dinolite.data.train_stream import shuffled, slot_stream
from tests.data import hostile_inputs as h
from tests.data.test_bad_data import augment, collate, png

MiB = h.MiB
Check = Callable[[list[str], pytest.LogCaptureFixture], None]


@contextmanager
def seconds(limit: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block runs longer than ``limit`` seconds."""

    def expire(*_) -> None:
        raise TimeoutError(f"still running after {limit} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ what must happen


def skipped_in_training(match: str, **budgets) -> Check:
    """The first batch (one pass over the source) counts one skipped sample, and the warning names the
    sample and the reason."""

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        n = sum(1 for unit in resolve_source(source) for _ in read_unit(unit))
        loader = build_train_loader(source, augment(), collate(), LoaderOptions(batch_size=n, **budgets))
        with caplog.at_level(logging.WARNING, logger="dinolite.data.loader"):
            batch = next(iter(loader))
        assert batch["skipped_samples"] == 1
        assert match in caplog.text and "key '" in caplog.text

    return check


def skipped_in_eval(match: str, **budgets) -> Check:
    """Evaluation yields every sample but the hostile one, with a warning naming it."""

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="dinolite.data.eval_dataset"):
            items = list(build_eval_dataset(source, None, **budgets))
        assert len(items) == len(resolve_source(source)) - 1
        assert match in caplog.text

    return check


def raises_in_eval(match: str) -> Check:
    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        with pytest.raises(SourceError, match=match):
            list(build_eval_dataset(source, None))

    return check


def refused(match: str) -> Check:
    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        with pytest.raises(SourceError, match=match):
            resolve_source(source)

    return check


def resolves_to(names: list[str], warning: str = "") -> Check:
    """The source's units are exactly these file names (in order), found within 10 s."""

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        with seconds(10), caplog.at_level(logging.WARNING):
            units = resolve_source(source)
        assert [Path(u.url).name for u in units] == names
        assert warning in caplog.text

    return check


def read_within(peak_mib: float, match: Optional[str], damaged: bool = False) -> Check:
    """Reading every sample (nothing decoded) peaks under ``peak_mib`` MiB of Python allocations; the
    hostile sample carries ``match`` as its error (or the shard ends as damaged with it); None: no error."""

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        errors: list[str] = []
        tracemalloc.start()
        try:
            for unit in resolve_source(source):
                errors += [s["__error__"] for s in read_unit(unit) if "__error__" in s]
        except DamagedShardError as exc:
            errors.append(str(exc))
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < peak_mib * MiB, f"reading peaked at {peak / MiB:.1f} MiB"
        assert any(match in e for e in errors) if match is not None else errors == [], errors
        assert damaged == any("is damaged" in e for e in errors)

    return check


def shuffles_within(buffer: int, buffer_bytes: int) -> Check:
    """One epoch through a shuffle buffer of ``buffer`` samples and ``buffer_bytes`` bytes delivers every
    sample and peaks at most ``buffer_bytes`` plus two samples above the same epoch without a buffer."""

    def peak_and_count(units: list, **shuffle) -> tuple[int, int]:
        delivered = 0
        tracemalloc.start()
        try:
            for _ in slot_stream(units, 0, 0, 1, epochs=1, **shuffle):
                delivered += 1
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return peak, delivered

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        units = resolve_source(source)
        unbuffered, total = peak_and_count(units, shuffle_buffer=1)
        buffered, delivered = peak_and_count(units, shuffle_buffer=buffer, shuffle_buffer_bytes=buffer_bytes)
        largest = max(len(value) for unit in units for s in read_unit(unit) for value in s.values())
        assert delivered == total
        assert buffered - unbuffered <= buffer_bytes + 2 * largest, f"{(buffered - unbuffered) / MiB:.1f} MiB"

    return check


def eval_cli_reads(count: int) -> Check:
    """The evaluation CLIs' checked source (``--train-data`` / ``--val-data``) yields ``count`` samples."""

    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        from dinolite.eval.datasets import build_labelled_dataset

        assert len(list(build_labelled_dataset(source, None, 0, 1, "--train-data"))) == count

    return check


def index_count_not_trusted(warning: str) -> Check:
    def check(source: list[str], caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING):
            (unit,) = resolve_source(source)
        assert unit.num_samples is None and warning in caplog.text
        assert len(list(read_unit(unit))) == 3  # the shard is read instead

    return check


# ------------------------------------------------------------------ the cases

GIF_REFUSED = "first frame of 3000x3000 (its header says 1x1)"
SMALL_PIXELS = {"max_image_pixels": 1_000_000}
SMALL_BYTES = {"max_sample_bytes": MiB}

CASES = [
    # item 4: a GIF whose header lies about its size decodes whatever data.max_image_pixels says
    pytest.param(h.shard(("k1.png", h.lying_gif())), skipped_in_training(GIF_REFUSED, **SMALL_PIXELS), id="gif-frame-outside-1x1-screen"),
    pytest.param(h.shard(("k1.png", h.gif_screen_smaller_than_frame())), skipped_in_training(GIF_REFUSED, **SMALL_PIXELS), id="gif-screen-1x1-frame-3000x3000"),
    pytest.param(h.folder_with(("x.png", png(1)), ("lie.png", h.lying_gif())), skipped_in_eval(GIF_REFUSED, **SMALL_PIXELS), id="gif-lie-in-eval-folder"),
    # item 4: a member is read whole, decompressed; each member and each sample has a byte budget
    pytest.param(h.shard(("k1.png", 4 * MiB), name="s-000000.tar.gz"), skipped_in_training("member 'k1.png' is 4,194,304 bytes", **SMALL_BYTES), id="gz-member-over-budget"),
    pytest.param(h.shard(("k1.png", png(5)), ("k1.json", 4 * MiB), name="s-000000.tar.gz"), skipped_in_training("member 'k1.json'", **SMALL_BYTES), id="gz-json-member-over-budget"),
    pytest.param(h.folder_with(("x.png", png(1)), ("big.png", 2 * MiB)), skipped_in_training("big.png' is 2,097,152 bytes", **SMALL_BYTES), id="folder-file-over-budget"),
    pytest.param(h.shard(("k1.png", 65 * MiB), name="s-000000.tar.gz"), read_within(8, "(data.max_sample_bytes)"), id="gz-member-over-default-budget-streamed"),
    pytest.param(h.many_empty_members(3000), read_within(0.5, None), id="3000-empty-members-one-key"),
    pytest.param(h.large_samples(24, MiB), shuffles_within(100, 3 * MiB), id="shuffle-buffer-of-large-samples"),
    pytest.param(h.extended_header_shard(tarfile.PAX_FORMAT, 8 * MiB), read_within(4, "extended header", damaged=True), id="pax-header-8mib"),
    pytest.param(h.extended_header_shard(tarfile.GNU_FORMAT, 8 * MiB), read_within(4, "extended header", damaged=True), id="gnu-long-name-8mib"),
    # item 4: a symlink loop hangs the folder scan (two links) or repeats images 41x (one link)
    pytest.param(h.image_folder("a/loop -> .."), resolves_to(["x.png", "y.png", "z.png"], "not followed"), id="symlink-loop-one-link"),
    pytest.param(h.image_folder("a/l1 -> ..", "a/l2 -> .."), resolves_to(["x.png", "y.png", "z.png"], "not followed"), id="symlink-loop-two-links"),
    pytest.param(h.image_folder("b -> a"), resolves_to(["x.png", "y.png", "z.png"], "not followed"), id="folder-linked-twice"),
    pytest.param(h.image_folder("a/w.png -> x.png"), resolves_to(["x.png", "y.png", "z.png"], "counted once"), id="file-linked-twice"),
    pytest.param(h.image_folder("fifo a/f.png"), resolves_to(["x.png", "y.png", "z.png"], "not regular files"), id="fifo-named-png"),
    pytest.param(h.image_folder("a/zero.png -> /dev/zero"), resolves_to(["x.png", "y.png", "z.png"], "not regular files"), id="link-to-dev-zero"),
    # item 4: labels are reported faithfully and a bad one names its shard and member
    pytest.param(h.shard(("k1.png", png(5)), ("k1.cls", b"cat")), raises_in_eval(r"s-000000.tar' key 'k1': member 'k1.cls' holds 'cat'"), id="label-text"),
    pytest.param(h.shard(("k1.png", png(5)), ("k1.cls", b"-3")), raises_in_eval("holds '-3'"), id="label-negative"),
    pytest.param(h.shard(("k1.png", png(5)), ("k1.cls", b"1_000")), raises_in_eval("holds '1_000'"), id="label-underscore"),
    pytest.param(h.shard(("k1.png", png(5)), ("k1.cls", b"9" * 5000)), raises_in_eval(r"\(5000 bytes\), not a class index"), id="label-5000-digits"),
    # item 7: shard folders
    pytest.param(h.shard_folder("s-000000.tar.gz", "s-000001.tgz"), resolves_to(["s-000000.tar.gz", "s-000001.tgz"]), id="folder-of-gz-shards"),
    pytest.param(h.shard_folder("s-000000.tar.gz", "s-000001.tgz"), eval_cli_reads(6), id="eval-cli-folder-of-gz-shards"),
    pytest.param(h.shard_folder("train-000000.tar", "train-000001.tar", "val-000000.tar"), refused(r"2 shard sets \('train-': 2 shard\(s\).*'val-': 1"), id="train-and-val-prefixes"),
    pytest.param(h.shard_folder("s-000000.tar", "s-000000.tar.gz", "s-000001.tar"), refused(r"holds 's-000000.tar' and 's-000000.tar.gz': the same shard in two forms"), id="shard-as-tar-and-tar-gz"),
    pytest.param(h.folder_with(("notes.txt", b"x")), refused(r"holds no shards \(.tar, .tar.gz, .tgz\) and no images .*: it holds 1 entry: a/$"), id="folder-without-data"),
    # audit: the index JSON next to shards is read within a budget and its counts are bounded by the data
    pytest.param(h.indexed_shard(17 * MiB), index_count_not_trusted("above the limit of 16,777,216 bytes (index JSON files)"), id="index-json-17mib"),
    pytest.param(h.indexed_shard({"shards": [{"name": "shard-000000.tar", "samples": 10**9, "bytes": "{bytes}"}]}), index_count_not_trusted("impossible"), id="index-count-impossible"),
]  # fmt: skip


@pytest.mark.parametrize("build, expect", CASES)
def test_hostile_input(build: h.Builder, expect: Check, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expect(build(tmp_path), caplog)


# ------------------------------------------------------------------ cases that need their own setup


def test_an_eps_member_never_reaches_ghostscript(tmp_path, monkeypatch, caplog):
    """Pillow renders EPS through Ghostscript (a program, run when installed): a shard member must not
    start it. Only the formats listed in decode.PILLOW_FORMATS reach Pillow."""
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    source = h.shard(("k1.png", eps))(tmp_path)
    skipped_in_training("not an image in any known format")(source, caplog)
    assert calls == []


def test_eval_cli_image_reader_refuses_a_lying_gif_naming_the_file(tmp_path):
    """visualize and segmentation read images through decode.open_image_file: the default budgets of
    the data path apply (the issue's GIF: header 1x1, 12000x12000 decoded, 43 bytes here)."""
    from dinolite.eval.visualize import load_images

    path = tmp_path / "lie.png"
    path.write_bytes(h.lying_gif(12000))
    with pytest.raises(ValueError, match=r"lie.png: first frame of 12000x12000 \(its header says 1x1\)"):
        load_images([path], 16)


def test_labels_are_reported_as_written(tmp_path):
    """A large but well-formed label comes back as written (bounding it by the data is evaluation's job)."""
    source = h.shard(("k1.png", png(5)), ("k1.cls", b" 99999999\n"))(tmp_path)
    assert [label for _, label, _ in build_eval_dataset(source, None)] == [0, 99999999, 0, 0]


def test_pillow_path_checks_the_frame_size_before_decoding(monkeypatch):
    """The refusal happens before Pillow decodes a pixel (ImageFile.load is never called)."""

    def must_not_decode(self):
        raise AssertionError("Pillow decoded an image above the pixel budget")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    with pytest.raises(decode_module.ImageTooLargeError, match=re.escape(GIF_REFUSED)):
        decode_module.decode_image(h.lying_gif(), max_pixels=1_000_000)


def test_a_shuffle_buffer_within_its_byte_budget_keeps_its_order():
    """The byte budget changes nothing until it is reached: the same draws, the same order."""
    import torch

    def order(**budget) -> list[int]:
        return list(shuffled(iter(range(500)), 40, torch.Generator().manual_seed(3), **budget))

    assert order() == order(max_bytes=41, size_of=lambda item: 1)  # 40 held and the one coming in
    assert order() != order(max_bytes=20, size_of=lambda item: 1)
    assert sorted(order(max_bytes=20, size_of=lambda item: 1)) == list(range(500))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_a_file_longer_than_its_size_is_read_within_the_budget():
    """/proc files say size 0 and hold more: the read goes on past the size, never past the budget."""
    from dinolite.data.budget import InputTooLargeError, read_file_capped

    assert read_file_capped("/proc/self/status", MiB, "key").startswith(b"Name:")
    with pytest.raises(InputTooLargeError, match=r"holds more than 100 bytes although its size said 0.*\(key\)"):
        read_file_capped("/proc/self/status", 100, "key")
