"""``python launch/local.py ...`` from a clone, without installing: the same command as ``dinolite-train``
and ``python -m dinolite.commands.train`` (see ``--help``; the code is in dinolite/commands/train.py).

Also runs under ``torchrun --nproc_per_node=N launch/local.py ...``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.commands.train import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
