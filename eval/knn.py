"""``python eval/knn.py ...`` from a clone, without installing: the same command as ``dinolite-knn``
and ``python -m dinolite.commands.knn`` (see ``--help``; the code is in dinolite/commands/knn.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.commands.knn import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
