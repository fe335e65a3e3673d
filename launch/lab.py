#!/usr/bin/env python
"""Run a collapse-lab matrix: ``python launch/lab.py --matrix dinolite/configs/lab/seeds.yaml [--slurm ...]`` (also ``dinolite-lab``).

See dinolite/commands/lab.py (and docs/collapse.md for what the report shows).
"""

import sys
from pathlib import Path

# Run from a source checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dinolite.commands.lab import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
