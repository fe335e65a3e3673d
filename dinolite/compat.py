"""Which torchvision goes with which torch.

Each torchvision release is built against exactly one torch release (its compiled ops load only with
that torch), so the pair is checked at start-up rather than left to fail inside a transform. The table
lists the pairs dinolite supports; ``docs/install.md`` prints it, setup.cfg bounds both to its range.
"""

from __future__ import annotations

import re

import torch
import torchvision

# torch (major, minor) -> torchvision (major, minor), from torchvision's release notes
TORCHVISION_FOR_TORCH: dict[tuple[int, int], tuple[int, int]] = {
    (2, 6): (0, 21),
    (2, 7): (0, 22),
    (2, 8): (0, 23),
    (2, 9): (0, 24),
    (2, 10): (0, 25),
    (2, 11): (0, 26),
    (2, 12): (0, 27),
    (2, 13): (0, 28),
    (2, 14): (0, 29),
}


class IncompatibleVersionsError(ValueError):
    """torch and torchvision come from different releases (or torch is outside the supported range).

    A ``ValueError``: the entrypoints report it as one ``error:`` line (dinolite.cli.run_main)."""


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise IncompatibleVersionsError(f"cannot read a version number from {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_torch_torchvision(torch_version: str, torchvision_version: str) -> None:
    """Raise :class:`IncompatibleVersionsError` naming the torchvision to install for this torch."""
    torch_mm, vision_mm = _major_minor(torch_version), _major_minor(torchvision_version)
    if torch_mm not in TORCHVISION_FOR_TORCH:
        supported = ", ".join(f"{a}.{b}" for a, b in TORCHVISION_FOR_TORCH)
        raise IncompatibleVersionsError(f"torch {torch_version} is not supported (supported: {supported})")
    wanted = TORCHVISION_FOR_TORCH[torch_mm]
    if vision_mm != wanted:
        want = f"{wanted[0]}.{wanted[1]}"
        raise IncompatibleVersionsError(
            f"torchvision {torchvision_version} does not go with torch {torch_version}: "
            f"pip install 'torchvision=={want}.*' (or the torch that torchvision {torchvision_version} was built for)"
        )


def check_installed_versions() -> None:
    """:func:`check_torch_torchvision` on the installed torch and torchvision."""
    check_torch_torchvision(torch.__version__, torchvision.__version__)
