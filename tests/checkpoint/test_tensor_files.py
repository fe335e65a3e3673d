"""Tensor files: what the storage check admits and refuses, and a real failed write keeping its errno."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from dinolite.checkpoint.tensor_files import TensorBudgetError, check_tensor_storage, load_tensor_file


@pytest.mark.parametrize(
    "tensors",
    [
        {"w": torch.randn(4, 3), "b": torch.zeros(3)},
        {"t": torch.randn(3, 4).t()},  # a transposed view: strides differ, every element stored
        {"half": torch.randn(8)[4:]},  # an offset view inside its storage
        {"nested": {"x": [torch.ones(2), (torch.ones(1, 1),)]}, "step": 3},
    ],
    ids=["plain", "transposed", "offset view", "nested with non-tensors"],
)
def test_honest_tensors_pass(tmp_path, tensors):
    torch.save(tensors, tmp_path / "t.pt")
    load_tensor_file(tmp_path / "t.pt")


@pytest.mark.parametrize(
    "tensors,message",
    [
        ({"w": torch.zeros(1).expand(1000, 1000)}, "'w' claims shape (1000, 1000) (4000000 bytes)"),
        ({"a": (base := torch.zeros(100)), "b": base.view(10, 10), "c": base[:50]}, "share storages holding 400"),
        ({"s": torch.zeros(1000, 1000).to_sparse()}, "only plain strided CPU tensors"),
        ({"deep": [{"x": torch.zeros(1).expand(10)}]}, "'deep[0].x' claims"),
    ],
    ids=["stride-0", "views of one storage", "sparse", "nested"],
)
def test_tensors_larger_than_their_storage_are_refused(tmp_path, tensors, message):
    torch.save(tensors, tmp_path / "t.pt")
    with pytest.raises(TensorBudgetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_tensor_file(tmp_path / "t.pt")
    check_tensor_storage({"ok": torch.zeros(2)}, "origin")


def test_a_failed_write_keeps_its_errno_where_torch_save_to_a_path_loses_it(tmp_path):
    """A real kernel refusal (RLIMIT_FSIZE: EFBIG, raised by the same write() that raises ENOSPC on a full
    disk) in a child process: torch's C++ writer turns it into 'unexpected pos', save_tensor_file keeps it."""
    script = textwrap.dedent(
        f"""
        import resource, signal, torch
        from dinolite.checkpoint.tensor_files import save_tensor_file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))
        for name, save in (("path", torch.save), ("ours", save_tensor_file)):
            try:
                save({{"a": torch.zeros(1000)}}, {str(tmp_path)!r} + "/" + name + ".pt")
            except BaseException as exc:
                print(name, type(exc).__name__, getattr(exc, "errno", None), exc)
        """
    )
    lines = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    path_line, ours_line = lines.splitlines()
    assert path_line.startswith("path RuntimeError None") and "unexpected pos" in path_line
    assert ours_line.startswith("ours OSError 27")  # EFBIG, the errno itself
