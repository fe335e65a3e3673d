"""Byte budgets: a file or member above its limit, or a path that is not a regular file, is refused unread."""

from __future__ import annotations

import os
import threading

import pytest

from dinolite.data.budget import InputTooLargeError, NotARegularFileError, check_budget, read_file_capped

KEY = "data.max_sample_bytes"


def test_a_size_at_the_limit_passes_and_above_it_is_named_with_the_key():
    check_budget(100, 100, "member 'a.jpg'", KEY)
    with pytest.raises(
        InputTooLargeError, match=rf"member 'a.jpg' is 1,001 bytes, above the limit of 1,000 bytes \({KEY}\)"
    ):
        check_budget(1001, 1000, "member 'a.jpg'", KEY)


def test_a_file_within_its_budget_is_read_whole(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"abc" * 1000)
    assert read_file_capped(path, 3000, KEY) == b"abc" * 1000
    assert read_file_capped(tmp_path / "x.jpg", 10**9, KEY) == b"abc" * 1000


def test_a_file_over_its_budget_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "big.bmp"
    path.write_bytes(b"\0" * 2049)
    with pytest.raises(InputTooLargeError, match=rf"'{path}' is 2,049 bytes, above the limit of 2,048 bytes \({KEY}\)"):
        read_file_capped(path, 2048, KEY)


def test_a_file_longer_than_its_size_says_is_capped_at_the_budget():
    # /proc files report size 0 and hold more: reading stops past the budget instead of trusting fstat
    assert read_file_capped("/proc/self/status", 10**6, KEY).startswith(b"Name:")
    with pytest.raises(InputTooLargeError, match="holds more than 10 bytes although its size said 0"):
        read_file_capped("/proc/self/status", 10, KEY)


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_file_capped(fifo, 100, KEY)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], NotARegularFileError) and "is not a regular file" in str(result[0])
    with pytest.raises(NotARegularFileError, match="'/dev/zero' is not a regular file"):
        read_file_capped("/dev/zero", 100, KEY)
