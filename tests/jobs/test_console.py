"""dinolite/jobs/console.py: the trainer's log lines on a console, once, without tearing a progress bar."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from dinolite.jobs.console import configure_console


@pytest.fixture
def logger_name() -> Iterator[str]:
    name = "dinolite.test_console"
    yield name
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_info_lines_are_time_then_message_and_debug_is_dropped(logger_name: str) -> None:
    stream = io.StringIO()
    logger = configure_console(logger_name, stream)
    logger.info("iteration 3 loss 1.25")
    logger.debug("not shown")
    assert re.fullmatch(r"\d\d:\d\d:\d\d iteration 3 loss 1\.25\n", stream.getvalue())


def test_configuring_twice_prints_each_line_once_and_nothing_reaches_the_root(logger_name, caplog) -> None:
    stream = io.StringIO()
    configure_console(logger_name, stream)
    logger = configure_console(logger_name, stream)
    with caplog.at_level(logging.INFO):
        logger.info("once")
    assert stream.getvalue().count("once") == 1 and not caplog.records


def test_a_failing_stream_does_not_raise(logger_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("closed pipe")

    errors: list[logging.LogRecord] = []
    logger = configure_console(logger_name, Broken())
    monkeypatch.setattr(logger.handlers[0], "handleError", errors.append)
    logger.info("lost")
    assert [r.getMessage() for r in errors] == ["lost"]
