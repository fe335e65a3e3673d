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
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

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


# Sphinx roles (:mod:`a.b`, :func:`~a.b.c`) and inline literals (``x``): the docstrings that serve as
# --help texts are written for the API docs, and a terminal shows the markup verbatim.
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)(?:\s*<[^`>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str) -> str:
    """``text`` without Sphinx markup: ``:mod:`a.b``` -> ``a.b``, ``:func:`~a.b.c``` -> ``c``, double
    backquotes dropped; line breaks and everything else kept."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2).strip()
        return target.rsplit(".", 1)[-1] if match.group(1) else target

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` appends ``(default: X)`` to every option that has a default (also those without a help
    text, which argparse's ArgumentDefaultsHelpFormatter skips) and keeps the description's line breaks
    (our descriptions hold example commands). ``None``/``False`` defaults (unset, flag off) are not shown.
    Sphinx markup is removed (:func:`plain_text`)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help or "")
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


class _Refused(argparse.Action):
    """An option another tool takes and dinolite does not: using it is a usage error saying what to do."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string}: {self.const}")


def refuse_option(parser: argparse.ArgumentParser, *names: str, reason: str, takes_value: bool = False) -> None:
    """``names``, another tool's option (DINOv2's), fail with ``reason`` instead of "unrecognized arguments";
    hidden from ``--help``, since dinolite does not take them."""
    parser.add_argument(
        *names,
        nargs=1 if takes_value else 0,
        action=_Refused,
        const=reason,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def refuse_dinov2_eval_flags(parser: argparse.ArgumentParser) -> None:
    """DINOv2's training flags ``--eval-only`` and ``--eval`` (docs/interop.md): what dinolite runs instead."""
    refuse_option(
        parser,
        "--eval-only",
        reason="DINOv2's flag to save the teacher of the latest checkpoint (eval/manual_N/teacher_checkpoint.pth) "
        "instead of training; in dinolite: dinolite-export --checkpoint RUN_DIR --output teacher.pth (DINOv2's "
        "layout), or evaluate it with dinolite-knn / dinolite-linear --backbone RUN_DIR",
    )
    refuse_option(
        parser,
        "--eval",
        takes_value=True,
        reason="DINOv2's training script reads this flag nowhere; evaluate a run with dinolite-knn / "
        "dinolite-linear / dinolite-segmentation --backbone RUN_DIR",
    )


# --------------------------------------------------------------------------------------------------
# Option values checked at parse time: a bad number or output path is one argparse error naming the
# option and the value, before any model is loaded or image read.
# --------------------------------------------------------------------------------------------------

Number = TypeVar("Number", int, float)


def bounded(
    kind: type[Number],
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    name: str | None = None,
) -> Callable[[str], Number]:
    """An argparse ``type=`` that parses ``kind`` (int or float) and refuses NaN, infinities and values
    outside ``[minimum, maximum]`` (or the open ends asked for). With ``nargs`` it checks every value.

    argparse turns the refusal into ``error: argument --epochs: expected an integer >= 1, got '0'``.
    """
    expected = _describe(kind, minimum, maximum, exclusive_minimum, exclusive_maximum)

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        too_high = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    # argparse names the type in some messages (and --help of custom actions): keep it readable
    parse.__name__ = name or f"bounded_{kind.__name__}"
    return parse


def _describe(kind: type, minimum: float | None, maximum: float | None, open_low: bool, open_high: bool) -> str:
    noun = "an integer" if kind is int else "a finite number"
    if minimum is not None and maximum is not None:
        low, high = ("(" if open_low else "["), (")" if open_high else "]")
        return f"{noun} in {low}{minimum:g}, {maximum:g}{high}"
    if minimum is not None:
        return f"{noun} {'>' if open_low else '>='} {minimum:g}"
    if maximum is not None:
        return f"{noun} {'<' if open_high else '<='} {maximum:g}"
    return noun


positive_int = bounded(int, 1, name="positive_int")
non_negative_int = bounded(int, 0, name="non_negative_int")
finite_float = bounded(float, name="finite_float")
positive_float = bounded(float, 0.0, exclusive_minimum=True, name="positive_float")
non_negative_float = bounded(float, 0.0, name="non_negative_float")
probability = bounded(float, 0.0, 1.0, name="probability")  # [0, 1]
# Seeds reach torch.manual_seed, torch.Generator and integer hashes of sample indices: 32 bits fit all.
seed_int = bounded(int, 0, 2**32 - 1, name="seed_int")


def check_output_path(path: str | os.PathLike, option: str, directory: bool = False) -> None:
    """Fail before any work when ``path`` cannot receive the output it is meant for.

    A file output must not be an existing directory; a directory output must not be an existing file.
    Missing parent folders are fine (writers create them) as long as the nearest existing one is a
    folder that a file can be created in, which is tried for real (a probe file, removed at once):
    permission bits do not tell root about read-only mounts, full quotas or ACLs.
    """
    target = Path(path)
    if directory and target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{option} {path}: exists and is not a directory")
    if not directory and target.is_dir():
        raise IsADirectoryError(f"{option} {path}: is a directory; give a file name, e.g. {target / 'results.json'}")
    existing = target if directory else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{option} {path}: {existing} is not a directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dinolite-write-probe-", dir=existing)
    except OSError as exc:
        raise PermissionError(f"{option} {path}: cannot create files in {existing}: {exc.strerror or exc}") from None
    os.close(handle)
    os.unlink(probe)
