"""``python eval/segmentation.py ...`` from a clone, without installing: the same command as ``dinolite-segmentation``
and ``python -m dinolite.commands.segmentation`` (see ``--help``; the code is in dinolite/commands/segmentation.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.commands.segmentation import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
