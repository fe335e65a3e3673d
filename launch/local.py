"""Train on this machine: ``python launch/local.py [--config NAME] [--output-dir DIR] [key=value ...]``.

Also runs under ``torchrun --nproc_per_node=N launch/local.py ...``. See dinolite/train/run.py.
"""

import sys
from pathlib import Path

# Run from a source checkout without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dinolite.train.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
