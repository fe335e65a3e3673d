"""The export CLI against full and read-only disks and missing extras (issue 24, items 6 and 7).

Every case is one row: a fault injected where the real one strikes (a writer that fails as it does on a
full disk, after writing part of its file; a directory that cannot be created; an optional package that
is not installed), the format it hits, and what the one ``error:`` line must say. Every row must end with
exit code 2, exactly one line on stderr, and the output folder exactly as it was: no half export, no
empty ``hf/``, no temporary file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import SafetensorError

from dinolite.commands.export import main as export_main
from dinolite.export import hub, writers
from tests.checkpoint.tiny_run import make_tiny_run

ENOSPC_TEXT = "No space left on device"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("export") / "run", iterations=(2,))


# ---------------------------------------------------------------------------------------------- faults


def _partial(path: Any) -> None:
    Path(path).write_bytes(b"\x00" * 100)  # what a writer leaves before the disk fills up


def full_safetensors(module: Any) -> Callable[[pytest.MonkeyPatch], None]:
    """safetensors' ``save_file`` in ``module`` fails as it does on a full disk (its Rust io::Error text)."""

    def inject(monkeypatch: pytest.MonkeyPatch) -> None:
        def save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
            _partial(filename)
            raise SafetensorError(f"Error while serializing: I/O error: {ENOSPC_TEXT} (os error 28)")

        monkeypatch.setattr(module, "save_file", save_file)

    return inject


def full_torch_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.save`` as on a full disk: given a path, torch's C++ zip writer (no errno); given a Python
    file, the ``OSError`` of its write."""

    def save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(target, (str, os.PathLike)):
            _partial(target)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        target.write(b"\x00" * 100)
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)

    monkeypatch.setattr(torch, "save", save)


def full_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights fit, then the disk is full when the record JSON is written after them."""
    real = Path.write_text

    def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.suffix == ".json":
            real(self, data[:10])
            raise OSError(errno.ENOSPC, ENOSPC_TEXT, str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing can be created inside the output's parent folder (a read-only mount)."""
    real = os.mkdir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent.name == "out":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def missing(module: str) -> Callable[[pytest.MonkeyPatch], None]:
    """``import module`` fails as when its extra is not installed."""

    def inject(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, module, None)

    return inject


# ---------------------------------------------------------------------------------------------- table


@dataclasses.dataclass(frozen=True)
class Case:
    fault: Callable[[pytest.MonkeyPatch], None]
    output: str  # inside the (pre-existing) folder out/
    options: tuple[str, ...]
    message: tuple[str, ...]


FULL = ("no space left on", "nothing of it was left behind")
CASES = {
    "full disk: .safetensors": Case(full_safetensors(writers), "b.safetensors", (), FULL),
    "full disk: record JSON after the weights": Case(full_json, "b.safetensors", (), FULL),
    "full disk: DINOv2 .pth": Case(full_torch_save, "b.pth", (), FULL),
    "full disk: transformers hf/ folder": Case(full_safetensors(hub), "hf", ("--format", "transformers"), FULL),
    "full disk: timm-hub folder": Case(full_safetensors(hub), "hf", ("--format", "timm-hub"), FULL),
    "read-only disk: transformers hf/ folder": Case(read_only, "hf", ("--format", "transformers"),
                                                    ("out is read-only", "Read-only file system")),
    "onnx extra missing": Case(missing("onnx"), "b.onnx", (), ("pip install 'dinolite[onnx]'",)),
    "hub extra missing for --push-to-hub": Case(missing("huggingface_hub"), "hf",
                                                ("--format", "transformers", "--push-to-hub", "org/name"),
                                                ("pip install 'dinolite[hub]'",)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_a_failed_export_is_one_error_line_and_leaves_nothing(run_dir, tmp_path, monkeypatch, capsys, name):
    case = CASES[name]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a file of the user's, untouched")
    before = sorted(p.name for p in out.iterdir())
    case.fault(monkeypatch)
    code = export_main(["--checkpoint", str(run_dir), "--output", str(out / case.output), *case.options])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in case.message:
        assert fragment in err, err
    assert sorted(p.name for p in out.iterdir()) == before  # no partial file, no empty hf/, no hidden stage


def test_an_export_still_writes_every_file_and_only_those(run_dir, tmp_path, capsys):
    """The staged write moves exactly the export's files into place (beside a user's own files)."""
    out = tmp_path / "out"
    (out / "hf").mkdir(parents=True)
    (out / "hf" / "README.md").write_text("kept")
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out / "b.safetensors")]) == 0
    assert export_main(["--checkpoint", str(run_dir), "--output", str(out / "hf"), "--format", "transformers"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b.safetensors", "b.safetensors.json", "hf"]
    assert sorted(p.name for p in (out / "hf").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    printed = capsys.readouterr().out
    assert f"  {out / 'b.safetensors'}\n" in printed and f"  {out / 'hf' / 'config.json'}\n" in printed


@pytest.mark.slow
@pytest.mark.parametrize("output,options", [("b.safetensors", ()), ("b.pth", ()), ("hf", ("--format", "transformers"))])
def test_a_real_refused_write_is_one_error_line_and_leaves_nothing(run_dir, tmp_path, output, options):
    """The kernel itself refuses the write (a file-size limit, RLIMIT_FSIZE: EFBIG from the same write()
    that returns ENOSPC on a full disk), in a child process running the installed CLI."""
    import resource
    import subprocess

    out = tmp_path / "out"
    out.mkdir()

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    command = [
        sys.executable,
        "-m",
        "dinolite.commands.export",
        "--checkpoint",
        str(run_dir),
        "--output",
        str(out / output),
    ]
    done = subprocess.run([*command, *options], capture_output=True, text=True, preexec_fn=limit_file_size)
    errors = [line for line in done.stderr.splitlines() if line.startswith(("error", "Traceback"))]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "File too large" in errors[0] and "nothing of it was left behind" in errors[0], errors
    assert list(out.iterdir()) == []
