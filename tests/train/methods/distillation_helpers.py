"""Tiny distillation configs and teachers for the distillation tests (a helper, not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch

from dinolite.config import Config, load_config
from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import build_backbone, build_heads

# The student: 2 blocks of width 32 on 16/8 px crops with patch 4, 16 prototypes, 4 images per process.
STUDENT = [
    "student.embed_dim=32",
    "student.depth=2",
    "student.num_heads=2",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "dino.head_n_prototypes=16",
    "dino.head_bottleneck_dim=8",
    "dino.head_hidden_dim=16",
    "ibot.head_n_prototypes=16",
    "ibot.head_bottleneck_dim=8",
    "ibot.head_hidden_dim=16",
    "train.batch_size_per_gpu=4",
    "train.iterations_per_epoch=2",
    "optim.epochs=3",
    "optim.warmup_epochs=1",
    "optim.freeze_last_layer_epochs=0",
    "train.log_every=1",
    "train.checkpoint_every=100",
    "monitor.every=2",
    "data.num_workers=0",
    "train.device=cpu",
    "evaluation.knn_at_end=false",
    "evaluation.online_every=0",
]


def distil_config(teacher: str | Path, *extra: str) -> Config:
    """The demo distillation preset shrunk to :data:`STUDENT`, distilling ``teacher``."""
    return load_config("demo_distillation", [*STUDENT, f"distillation.teacher_weights={teacher}", *extra])


def write_teacher(
    path: Path,
    width: int = 48,
    depth: int = 3,
    heads: bool = True,
    separate: bool = False,
    prototypes: int = 16,
    num_heads: int = 3,
) -> dict[str, torch.Tensor]:
    """An export (``--with-heads`` when ``heads``) of a randomly initialised ViT wider and deeper than the
    student, patch 4, ``prototypes`` prototypes; returns its tensors (backbone, then ``<head>.*``)."""
    cfg = load_config(
        "demo",
        [
            f"student.embed_dim={width}",
            f"student.depth={depth}",
            f"student.num_heads={num_heads}",
            "student.patch_size=4",
            "crops.global_crops_size=16",
            "crops.local_crops_size=8",
            f"dino.head_n_prototypes={prototypes}",
            f"ibot.head_n_prototypes={prototypes}",
            f"ibot.separate_head={str(separate).lower()}",
        ],
    )
    torch.manual_seed(4321)
    backbone = build_backbone(cfg.student, img_size=16)
    modules = build_heads(cfg.dino, cfg.ibot, width)
    names = ("dino_head", "ibot_head") if separate else ("dino_head",)
    head_state = {f"{n}.{k}": v for n in names for k, v in modules[n].state_dict().items()}
    spec = spec_from_backbone(backbone, train_img_size=16, mean=tuple(cfg.crops.mean), std=tuple(cfg.crops.std))
    write_safetensors(backbone.state_dict(), spec, path, heads=head_state if heads else None)
    return {**backbone.state_dict(), **head_state}


def slow_steps(pause: float):
    """A ``stop_requested`` hook that never stops but pauses each iteration (a window to kill the run in)."""
    import time

    def poll() -> bool:
        time.sleep(pause)
        return False

    return poll


def kill_at_iteration_4_and_resume(root: Path, teacher: Path, *overrides: str) -> None:
    """Distil 8 iterations into ``root/ref`` uninterrupted; into ``root/run`` SIGKILL the run once its checkpoint
    of iteration 4 is the latest, then resume it to the end. Asserts that each process did what it should."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[3]

    def start(out: Path, pause: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, __file__, str(out), str(teacher), str(pause), *overrides],
            env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    reference = start(root / "ref", 0.0)
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-3000:]
    killed = start(root / "run", 0.3)
    pointer = root / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not (pointer.is_file() and pointer.read_text().strip() == "iter_00000004"):
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint at iteration 4"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (root / "run" / "checkpoints" / "iter_00000008").exists()  # it died before the end
    resumed = start(root / "run", 0.0)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resumed from" in out and "at iteration 4" in out, out[-3000:]


def main() -> None:
    """``python distillation_helpers.py OUT TEACHER PAUSE [OVERRIDE ...]``: distil for 8 iterations, a checkpoint
    every 2."""
    import logging
    import sys

    from dinolite.train.loop import train
    from dinolite.train.run import RunHooks
    from tests.methods.test_every_method import random_image_stream

    out, teacher, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)  # "resumed from ..." reaches the test
    extra = sys.argv[4:]
    cfg = distil_config(teacher, f"train.output_dir={out}", "optim.epochs=4", "train.checkpoint_every=2", *extra)
    train(cfg, batches=random_image_stream, hooks=RunHooks(stop_requested=slow_steps(pause)))


if __name__ == "__main__":
    main()
