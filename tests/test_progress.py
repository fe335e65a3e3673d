"""dinolite/progress.py: a bar only when asked for and a person watches stderr; never on stdout."""

from __future__ import annotations

import io
import sys

import pytest

from dinolite import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_follows_whether_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress.interactive()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.interactive()
    monkeypatch.setattr(sys, "stderr", object())  # a stream without isatty is not a terminal
    assert not progress.interactive()


def test_a_bar_draws_on_a_terminal_stderr_and_passes_items_through(monkeypatch, capsys) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress.progress_bar(range(3), total=3, desc="extract")) == [0, 1, 2]
    assert "extract" in terminal.getvalue()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("terminal, enabled", [(False, True), (True, False)])
def test_no_bar_in_a_log_or_with_no_progress(monkeypatch, terminal: bool, enabled: bool) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress.progress_bar(total=4, desc="train", enabled=enabled)
    bar.update(4)
    bar.close()
    assert bar.disable and stream.getvalue() == ""
