"""``python eval/visualize.py ...`` from a clone, without installing: the same command as ``dinolite-visualize``
and ``python -m dinolite.commands.visualize`` (see ``--help``; the code is in dinolite/commands/visualize.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.commands.visualize import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
