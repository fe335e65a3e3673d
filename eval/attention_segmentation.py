"""``python eval/attention_segmentation.py ...`` from a clone, without installing: the same command as
``dinolite-attention-segmentation`` and ``python -m dinolite.commands.attention_segmentation`` (see ``--help``;
the code is in dinolite/commands/attention_segmentation.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dinolite.commands.attention_segmentation import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
