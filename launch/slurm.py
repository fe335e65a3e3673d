#!/usr/bin/env python
"""``python launch/slurm.py ...`` from a clone, without installing: the same command as ``dinolite-slurm``
and ``python -m dinolite.commands.slurm`` (see ``--help``; the code is in dinolite/commands/slurm.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the package next to it
    sys.path.insert(0, str(ROOT))

from dinolite.commands.slurm import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
