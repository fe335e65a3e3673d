"""Every fenced example of README.md runs, in order, from a scratch directory (helpers: tests/doc_examples.py).

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

import pytest

from tests.doc_examples import ROOT, TINY_TRAINING, commands, fenced_blocks, prepare

README = ROOT / "README.md"
RUN_KINDS = {"bash", "python", "bash gpu", "bash cluster", "bash setup", "bash suite"}
LINKED = ("launch", "eval", "dinolite", "configs", "benchmarks", ".ci", "hubconf.py")


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
