"""What the tests that run the docs' fenced examples share: reading the blocks of a page and turning a
documented command into the one the test runs (tests/test_readme_examples.py, tests/test_interop_examples.py).

The fence conventions themselves are documented for readers at the end of README.md and of docs/interop.md.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Only the length shrinks: the online evaluation is still built (its sources resolved and read), and the
# end-of-run report's sources are still validated at start-up.
TINY_TRAINING = [
    "train.max_iterations=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "evaluation.knn_at_end=false",
]
SETUP_STEPS = ("python3 -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install")
TRAINING_COMMANDS = ("python launch/local.py", "dinolite-train")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info string, body)`` of every fenced block, in order."""
    return [
        (m.group(1).strip(), m.group(2))
        for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]


def commands(body: str) -> list[str]:
    """Shell commands of a block: one per line (backslash continuations joined), comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [
        line.split(" # ")[0].strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def console_scripts() -> dict[str, str]:
    """``{"dinolite-train": "dinolite.commands.train:main", ...}`` as setup.cfg installs them."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def _with_dry_run(command: str) -> str:
    own, sep, program = command.partition(" -- ")
    return f"{own} --dry-run{sep and ' -- '}{program}"


def _is_training(command: str) -> bool:
    return any(command == c or command.startswith(f"{c} ") for c in TRAINING_COMMANDS)


def prepare(kind: str, command: str) -> list[str]:
    """The shell commands a test runs for one documented command of a block of ``kind``:

    - ``bash``: as written; training commands get ``TINY_TRAINING``, ``eval/linear.py`` one epoch, and
      optional arguments written ``[--flag ...]`` are passed (the brackets dropped);
    - ``bash gpu``: ``torchrun --nproc_per_node=N`` becomes ``python`` and ``--dry-run`` is added;
    - ``bash cluster``: ``--dry-run`` is added;
    - ``bash setup``: install steps are skipped, the rest runs as ``bash``;
    - ``bash suite``: scripts are syntax-checked (``bash -n``), nothing else runs.
    """
    if kind == "bash suite":
        return [f"bash -n {shlex.split(command)[1]}"] if command.startswith("bash ") else []
    if kind == "bash setup":
        steps = [step.strip() for step in command.split("&&")]
        return [s for step in steps if not step.startswith(SETUP_STEPS) for s in prepare("bash", step)]
    if kind == "bash gpu":
        return [_with_dry_run(re.sub(r"^torchrun (--\S+ )*", "python ", command))]
    if kind == "bash cluster":
        return [_with_dry_run(command)]
    command = re.sub(r"\[(--[^\]]+)\]", r"\1", command)
    if _is_training(command) and "--dry-run" not in command:
        return [f"{command} {' '.join(TINY_TRAINING)}"]
    if command.startswith("python eval/linear.py"):
        return [f"{command} --epochs 1"]
    return [command]
