"""Every fenced example of README.md runs, in order, from a scratch directory.

The fence's info string says how (the convention is documented at the end of README.md):

- ``bash``: run as written; training commands (``launch/local.py``) get ``TINY_TRAINING`` appended and
  ``eval/linear.py`` one epoch, so the whole journey takes a minute or two on a CPU;
- ``python``: run as a script;
- ``bash gpu``: needs GPUs: ``torchrun --nproc_per_node=N`` becomes ``python`` and ``--dry-run`` is added
  (the config is loaded and validated, nothing trains);
- ``bash cluster``: needs Slurm: ``--dry-run`` is added (the sbatch script is rendered, nothing submitted);
- ``bash setup``: install steps (``python3 -m venv``, ``. .venv/bin/activate``, ``pip install``) are
  skipped (the test runs inside the installed environment), the rest runs;
- ``bash suite``: the test suite itself: scripts are syntax-checked (``bash -n``), nothing runs;
- ``text``, ``python`` output, unlabelled blocks: not commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_KINDS = {"bash", "python", "bash gpu", "bash cluster", "bash setup", "bash suite"}
# Only the length shrinks: the online evaluation is still built (its sources resolved and read), and the
# end-of-run report's sources are still validated at start-up.
TINY_TRAINING = [
    "train.max_iterations=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "evaluation.knn_at_end=false",
]
SETUP_STEPS = ("python3 -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install")
LINKED = ("launch", "eval", "dinolite", "configs", "benchmarks", ".ci", "hubconf.py")


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


def _with_dry_run(command: str) -> str:
    own, sep, program = command.partition(" -- ")
    return f"{own} --dry-run{sep and ' -- '}{program}"


def prepare(kind: str, command: str) -> list[str]:
    """The shell commands the test runs for one README command of a block of ``kind`` (see the docstring)."""
    if kind == "bash suite":
        return [f"bash -n {shlex.split(command)[1]}"] if command.startswith("bash ") else []
    if kind == "bash setup":
        steps = [step.strip() for step in command.split("&&")]
        return [s for step in steps if not step.startswith(SETUP_STEPS) for s in prepare("bash", step)]
    if kind == "bash gpu":
        return [_with_dry_run(re.sub(r"^torchrun (--\S+ )*", "python ", command))]
    if kind == "bash cluster":
        return [_with_dry_run(command)]
    if "launch/local.py" in command and "--dry-run" not in command:
        return [f"{command} {' '.join(TINY_TRAINING)}"]
    if command.startswith("python eval/linear.py"):
        return [f"{command} --epochs 1"]
    return [command]


def test_every_block_has_a_known_kind():
    kinds = {info for info, _ in fenced_blocks(README.read_text())}
    unknown = kinds - RUN_KINDS - {"", "text"}
    assert not unknown, f"README fences with an unknown info string (see the convention at its end): {unknown}"


def test_commands_are_prepared_by_the_convention():
    assert prepare(
        "bash setup", "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python launch/local.py"
    ) == [f"python launch/local.py {' '.join(TINY_TRAINING)}"]
    assert prepare("bash gpu", "torchrun --nproc_per_node=8 launch/local.py --config vitl16") == [
        "python launch/local.py --config vitl16 --dry-run"
    ]
    assert prepare("bash cluster", "python launch/slurm.py --entry eval/knn.py -- --backbone x") == [
        "python launch/slurm.py --entry eval/knn.py --dry-run -- --backbone x"
    ]
    assert prepare("bash suite", "bash .ci/run") == ["bash -n .ci/run"]
    assert prepare("bash suite", "pytest -m 'not slow'") == []


@pytest.mark.slow
def test_readme_examples_run(tmp_path):
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ran = []
    for index, (kind, body) in enumerate(fenced_blocks(README.read_text())):
        if kind not in RUN_KINDS:
            continue
        if kind == "python":
            script = tmp_path / f"readme_block_{index}.py"
            script.write_text(body)
            to_run = [f"{shlex.quote(sys.executable)} {script.name}"]
        else:
            to_run = [c for command in commands(body) for c in prepare(kind, command)]
        for command in to_run:
            shell = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", command)
            done = subprocess.run(
                shell, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
            )
            assert done.returncode == 0, (
                f"README block {index} ({kind}): {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
            ran.append(command)
    assert any("launch/local.py" in c for c in ran) and any("eval/knn.py" in c for c in ran)
    # What the journey promises exists afterwards.
    for produced in (
        "output/demo/metrics.jsonl",
        "output/demo/eval/knn.json",
        "output/demo/vis/attention.png",
        "exports/demo.safetensors",
        "exports/demo.onnx",
        "output/mine/checkpoints/latest",
    ):
        assert (tmp_path / produced).exists(), produced
