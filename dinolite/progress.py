"""Progress bars with a total for the long loops (training, feature extraction, probe/head training).

One rule everywhere: a bar is shown only when asked for (no ``--no-progress``) *and* stderr is a
terminal; in a log file or a CI job the bar's carriage returns would be noise. Bars write to stderr so
stdout stays parseable.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def interactive() -> bool:
    """Whether stderr is a terminal (a person is watching)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual one, updated with ``.update(n)``) with ``total``;
    disabled unless ``enabled`` and stderr is a terminal (then it is a transparent pass-through)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not (enabled and interactive()),
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
