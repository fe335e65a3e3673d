"""``python eval/visualize.py ...`` from a clone, without installing: the same command as ``dinolite-visualize``
and ``python -m dinolite.eval.visualize`` (see ``--help``; the code is in dinolite/eval/visualize_cli.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.eval.visualize_cli import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
