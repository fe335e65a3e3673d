"""What every command-line entrypoint shares: ``--help`` that shows defaults, and ``error:`` one-liners.

A user who passes a missing folder or a bad value should read one line saying which option/file/value
is at fault, not a 13-line traceback. :func:`run_main` turns the errors that bad *input* raises
(``ValueError`` and its subclasses such as ``ConfigError``; missing/existing files) into
``error: <message>`` on stderr and exit code 2 (the code argparse uses for usage errors). Anything else
is a bug and keeps its traceback. ``DINOLITE_TRACEBACK=1`` shows the traceback for input errors too.

Depends on nothing in the package, so every layer's entrypoint can use it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

EXIT_USAGE = 2

# Raised by bad input (paths, values, formats); the message names the option/file at fault.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` appends ``(default: X)`` to every option that has a default (also those without a help
    text, which argparse's ArgumentDefaultsHelpFormatter skips) and keeps the description's line breaks
    (our descriptions hold example commands). ``None``/``False`` defaults (unset, flag off) are not shown."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text == "%(default)s":
            return "(default: %(default)s)"
        if "%(default)" in text or not action.option_strings or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()

    def add_argument(self, action: argparse.Action) -> None:
        if not (action.help or "").strip() and action.option_strings and _shows_default(action):
            action.help = "%(default)s"  # argparse prints no help column at all for an empty help
        super().add_argument(action)


def _shows_default(action: argparse.Action) -> bool:
    # Identity checks: 0 == False, and a default of 0 must be shown.
    return not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)


def make_parser(prog: str | None = None, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with :class:`HelpFormatter`."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)


def format_error(exc: BaseException) -> str:
    """``error: <message>`` (a missing file's message already holds its path; ``KeyError`` quotes)."""
    message = str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.filename}: {exc.strerror or message}"
    return f"error: {message or type(exc).__name__}"


def run_main(
    main: Callable[[Sequence[str] | None], int],
    argv: Sequence[str] | None = None,
    errors: tuple[type[BaseException], ...] = INPUT_ERRORS,
    exit_code: int = EXIT_USAGE,
) -> int:
    """Call ``main(argv)``; an input error becomes one ``error:`` line on stderr and ``exit_code``."""
    try:
        return main(argv)
    except errors as exc:
        if os.environ.get("DINOLITE_TRACEBACK"):
            raise
        print(format_error(exc), file=sys.stderr)
        return exit_code
