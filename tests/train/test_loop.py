"""The training loop: logging, checkpoints, resume, NaN stop, preemption, frozen prototypes.

Every run here trains on a deterministic stand-in stream (``batches=fake_stream``) built from random tensors
and the real ``collate_data_and_cast`` (the loop's data wiring is exercised by the digits run in test_demo.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.data.collate import collate_data_and_cast
from dinolite.data.masking import MaskingGenerator
from dinolite.jobs.console import configure_console
from dinolite.train import loop
from dinolite.train.batches import StreamRequest
from dinolite.train.logging import MetricLogger
from dinolite.train.methods.dinov2 import build_objective
from dinolite.train.methods.dinov2_objective import DINOv2Schedules
from dinolite.train.precision import autocast_dtype
from dinolite.train.run import RunHooks
from dinolite.train.step import NonFiniteLossError

TINY = [
    "student.embed_dim=16",
    "student.depth=1",
    "student.num_heads=2",
    "student.patch_size=4",
    "student.layerscale=0.1",
    "dino.head_n_prototypes=32",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=8",
    "ibot.head_n_prototypes=32",
    "ibot.head_hidden_dim=32",
    "ibot.head_bottleneck_dim=8",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "train.batch_size_per_gpu=4",
    "train.iterations_per_epoch=4",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "teacher.warmup_teacher_temp_epochs=1",
    "optim.freeze_last_layer_epochs=1",
    "train.log_every=2",
    "train.checkpoint_every=3",
    "monitor.every=2",
    "data.num_workers=0",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(tmp_path: Path, *extra: str):
    return load_config("demo", [*TINY, f"train.output_dir={tmp_path}", *extra])


def fake_stream(request: StreamRequest):
    """Batch i depends only on (seed, rank, i): a stand-in for build_train_loader(start_batch=...)."""
    cfg, rank, start_batch = request.cfg, request.rank, request.start_batch
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    masking = MaskingGenerator(input_size=(grid, grid), max_num_patches=grid * grid // 2)
    index = start_batch
    while True:
        g = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank * 100 + index)
        g_size, l_size = cfg.crops.global_crops_size, cfg.crops.local_crops_size
        samples = [
            {
                "global_crops": [torch.randn(3, g_size, g_size, generator=g) for _ in range(2)],
                "local_crops": [
                    torch.randn(3, l_size, l_size, generator=g) for _ in range(cfg.crops.local_crops_number)
                ],
            }
            for _ in range(cfg.train.batch_size_per_gpu)
        ]
        batch = collate_data_and_cast(samples, (0.1, 0.5), 0.5, grid * grid, masking, generator=g)
        batch["skipped_samples"] = 1 if index == 0 else 0
        yield batch
        index += 1


def train(cfg, batches=fake_stream, **kwargs) -> loop.TrainResult:
    """:func:`dinolite.train.loop.train` on the stand-in stream (other test modules import it too)."""
    return loop.train(cfg, batches=batches, **kwargs)


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_run_logs_saves_config_and_checkpoints(tmp_path):
    cfg = tiny_config(tmp_path)
    result = train(cfg)
    assert result.status == "finished" and result.iteration == 8
    assert (tmp_path / "config.yaml").is_file()
    assert load_config(tmp_path / "config.yaml").student.embed_dim == 16
    assert result.checkpoint_path == tmp_path / "checkpoints" / "iter_00000008"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter_00000008"
    assert list((tmp_path / "tensorboard").iterdir())
    train_records = [r for r in records(tmp_path) if "loss" in r]
    assert [r["iteration"] for r in train_records] == [1, 2, 4, 6, 8]  # iteration 1: a broken run shows at once
    first = train_records[0]
    for key in (
        "loss",
        "dino_loss",
        "ibot_loss",
        "koleo_loss",
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "images_per_s",
        "data_wait",
        "memory_gb",
        "images_seen",
        "skipped_samples",
        "epoch",
    ):
        assert key in first, key
    assert first["skipped_samples"] == 1 and first["images_seen"] == 4  # iteration 1 of batch 4
    assert first["loss"] == pytest.approx(first["dino_loss"] + first["ibot_loss"] + first["koleo_loss"], rel=1e-5)
    assert 0.0 <= first["data_wait"] <= 1.0
    collapse = [r for r in records(tmp_path) if any(k.startswith("collapse/") for k in r)]
    assert [r["iteration"] for r in collapse] == [2, 4, 6, 8]


def test_one_step_moves_student_and_teacher_is_ema(tmp_path):
    cfg = tiny_config(tmp_path, "train.max_iterations=1", "optim.warmup_epochs=0")
    torch.manual_seed(cfg.train.seed)
    objective = build_objective(cfg)
    student0 = {k: v.detach().clone() for k, v in objective.student.named_parameters()}
    teacher0 = {k: v.detach().clone() for k, v in objective.teacher.named_parameters()}
    train(cfg, objective=objective)
    m = DINOv2Schedules.from_config(cfg).momentum(0)
    moved = [k for k, v in objective.student.named_parameters() if not torch.equal(v, student0[k])]
    assert "backbone.blocks.0.attn.qkv.weight" in moved
    for name, t in objective.teacher.named_parameters():
        s = dict(objective.student.named_parameters())[name]
        torch.testing.assert_close(t, m * teacher0[name] + (1 - m) * s, rtol=1e-6, atol=1e-7)
    # the prototype layer is frozen in the first epoch
    assert torch.equal(objective.student["dino_head"].last_layer.weight, student0["dino_head.last_layer.weight"])


def test_prototypes_move_after_freeze_epochs(tmp_path):
    cfg = tiny_config(tmp_path, "train.max_iterations=6")
    torch.manual_seed(cfg.train.seed)
    objective = build_objective(cfg)
    before = objective.student["dino_head"].last_layer.weight.detach().clone()
    train(cfg, objective=objective)
    assert not torch.equal(objective.student["dino_head"].last_layer.weight, before)


@pytest.mark.numerics
def test_resume_continues_iteration_count_and_schedules(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    full = train(tiny_config(straight))
    first = train(tiny_config(split, "train.max_iterations=5"))
    assert first.iteration == 5 and first.checkpoint_path.name == "iter_00000005"
    second = train(tiny_config(split))
    assert second.status == "finished" and second.iteration == 8
    split_iters = [r["iteration"] for r in records(split) if "loss" in r]
    assert split_iters == [1, 2, 4, 5, 6, 8]  # 5: the end of the shortened run; no restart from 0
    a = {r["iteration"]: r for r in records(straight) if "loss" in r}
    b = {r["iteration"]: r for r in records(split) if "loss" in r}
    for key in ("lr", "wd", "momentum", "teacher_temp", "images_seen"):
        assert a[8][key] == b[8][key], key
    assert a[8]["loss"] == pytest.approx(b[8]["loss"], rel=1e-5)
    from dinolite.checkpoint import load_consolidated_state_dict

    wa = load_consolidated_state_dict(full.checkpoint_path, model="teacher", part="backbone")
    wb = load_consolidated_state_dict(second.checkpoint_path, model="teacher", part="backbone")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_naming_iteration_and_terms_without_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "train.max_iterations=3")
    train(cfg)
    good = tmp_path / "checkpoints" / "iter_00000003"
    stamp = {p.name: p.stat().st_mtime_ns for p in good.iterdir()}
    cfg = tiny_config(tmp_path, "train.max_iterations=6")
    torch.manual_seed(cfg.train.seed)
    objective = build_objective(cfg)
    original = objective.dino_loss.forward
    objective.dino_loss.forward = lambda *a, **k: original(*a, **k) * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 .*dino_loss=nan.*ibot_loss=[0-9.]+.*koleo_loss="):
        train(cfg, objective=objective)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("iter")) == [good.name]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == good.name
    assert {p.name: p.stat().st_mtime_ns for p in good.iterdir()} == stamp


def test_stop_requested_checkpoints_and_returns_preempted(tmp_path):
    calls = []

    def stop_requested() -> bool:
        calls.append(1)
        return len(calls) >= 2

    result = train(tiny_config(tmp_path), hooks=RunHooks(stop_requested=stop_requested))
    assert result.status == "preempted" and result.iteration == 2
    assert result.checkpoint_path.name == "iter_00000002"
    resumed = train(tiny_config(tmp_path))
    assert resumed.status == "finished" and resumed.iteration == 8


def test_koleo_needs_two_images_per_gpu(tmp_path):
    with pytest.raises(ConfigError, match="batch_size_per_gpu=1.*koleo"):
        train(tiny_config(tmp_path, "train.batch_size_per_gpu=1"))
    train(tiny_config(tmp_path, "train.batch_size_per_gpu=1", "dino.koleo_loss_weight=0", "train.max_iterations=1"))


def test_precision_choice_and_cpu_bf16_fallback(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    result = train(tiny_config(tmp_path, "train.compute_precision=bf16", "train.max_iterations=2"))
    assert result.status == "finished"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(tmp_path) if "loss" in r)


def test_gradient_clipping_bounds_each_module_norm(tmp_path):
    cfg = tiny_config(tmp_path, "optim.clip_grad=1e-3", "train.max_iterations=2", "train.log_every=1")
    train(cfg)
    norms = [r for r in records(tmp_path) if "grad_norm/backbone" in r]
    assert norms and all(r["grad_norm/backbone"] > 1e-3 for r in norms)  # measured before clipping
    # clip_grad=0 disables clipping (and the norm measurement)
    other = tmp_path / "noclip"
    train(tiny_config(other, "optim.clip_grad=0", "train.max_iterations=2"))
    assert not any("grad_norm/backbone" in r for r in records(other))


def test_metric_logger_writes_only_when_enabled(tmp_path):
    stream = io.StringIO()
    console = configure_console("dinolite.test_metric_logger", stream=stream)
    with MetricLogger(tmp_path / "main", enabled=True, tensorboard=False, console=console) as log:
        log.log(10, {"loss": torch.tensor(1.5), "lr": 1e-4}, total_iterations=100, eta_seconds=3725)
    line = json.loads((tmp_path / "main" / "metrics.jsonl").read_text())
    assert line == {"iteration": 10, "time": line["time"], "loss": 1.5, "lr": 1e-4}  # schema: test_logging.py
    out = stream.getvalue()
    assert "it 10/100" in out and "loss 1.5" in out and "eta 1:02:05" in out
    with MetricLogger(tmp_path / "other", enabled=False) as log:
        log.log(10, {"loss": 1.0})
    assert not (tmp_path / "other").exists()
