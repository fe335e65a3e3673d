#!/usr/bin/env python
"""``python launch/slurm.py ...`` from a clone, without installing: the same command as ``dinolite-slurm``
and ``python -m dinolite.train.slurm_launch`` (see ``--help``; the code is in dinolite/train/slurm_launch.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the package next to it
    sys.path.insert(0, str(ROOT))

from dinolite.train.slurm_launch import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
