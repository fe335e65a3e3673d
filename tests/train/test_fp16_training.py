"""fp16 training on CPU (autocast float16 + loss scaling): it trains, an overflow is skipped rather than
applied, and a resumed run continues bitwise like an uninterrupted one (the scale is checkpointed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinolite.checkpoint import load_consolidated_state_dict
from dinolite.commands.train import main as train_main
from dinolite.train import loss_scaling

TINY = [
    "train.compute_precision=fp16",
    "student.depth=1",
    "train.batch_size_per_gpu=8",
    "crops.local_crops_number=2",
    "data.num_workers=0",
    "monitor.every=0",
    "evaluation.knn_at_end=false",
    "train.log_every=1",
    "train.checkpoint_every=2",
]


def _records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture
def initial_scale(monkeypatch):
    """Start the loss scale at ``2**exponent`` instead of torch's 2^16 (which the demo overflows 6 times)."""

    def use(exponent: float) -> None:
        original = loss_scaling.LossScaler.__init__
        monkeypatch.setattr(
            loss_scaling.LossScaler,
            "__init__",
            lambda self, enabled, **kw: original(self, enabled, **{**kw, "init_scale": 2.0**exponent}),
        )

    return use


def test_fp16_backs_off_from_the_default_scale_then_trains(tmp_path):
    assert train_main(["--config", "demo", "--output-dir", str(tmp_path / "run"), *TINY, "train.max_iterations=8"]) == 0
    records = _records(tmp_path / "run")
    assert [r["iteration"] for r in records] == list(range(1, 9))
    # the scale starts at 2^16 and halves once per overflowed (skipped) step; it grows only after 2000 clean ones
    assert all(r["loss_scale"] == 2.0**16 * 0.5 ** r["skipped_steps"] for r in records)
    assert 0 < records[-1]["skipped_steps"] < 8  # overflows first (as DINOv2 runs do), then steps are taken
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_an_overflow_skips_the_step_and_halves_the_scale(tmp_path, initial_scale):
    initial_scale(120)  # a scale no fp16 gradient survives: every step overflows until it has come down
    run = tmp_path / "run"
    assert (
        train_main(
            ["--config", "demo", "--output-dir", str(run), *TINY, "train.max_iterations=2", "optim.warmup_epochs=0"]
        )
        == 0
    )
    records = _records(run)
    assert [r["loss_scale"] for r in records] == [2.0**119, 2.0**118]
    assert [r["skipped_steps"] for r in records] == [1, 2]
    # both steps were skipped: the student is still its initialisation, which the EMA teacher (a copy of
    # it, averaged with it) equals up to rounding; one AdamW step at this lr would move it ~3e-4
    student = load_consolidated_state_dict(run, model="student", part="backbone")
    teacher = load_consolidated_state_dict(run, model="teacher", part="backbone")
    for key, value in student.items():
        torch.testing.assert_close(value, teacher[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.numerics
def test_resumed_fp16_run_equals_the_uninterrupted_one(tmp_path, initial_scale):
    initial_scale(6)  # steps are taken from the start (the default scale would only back off here)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(["--config", "demo", "--output-dir", str(straight), *TINY, "train.max_iterations=4"]) == 0
    assert train_main(["--config", "demo", "--output-dir", str(resumed), *TINY, "train.max_iterations=2"]) == 0
    assert train_main(["--config", "demo", "--output-dir", str(resumed), *TINY, "train.max_iterations=4"]) == 0
    for model in ("student", "teacher"):
        a = load_consolidated_state_dict(straight, model=model, part="backbone")
        b = load_consolidated_state_dict(resumed, model=model, part="backbone")
        for key, value in a.items():
            assert torch.equal(value, b[key]), f"{model}.{key}"
    assert _records(straight)[-1]["loss"] == _records(resumed)[-1]["loss"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fsdp_mixed_precision_policy_follows_the_compute_dtype(dtype):
    from dinolite.fsdp.sharding import plan_sharding

    plan = plan_sharding("full_shard", dtype, False, False, "cuda", 8)
    assert plan.mixed_precision and plan.param_dtype == dtype
    assert plan_sharding("full_shard", True, False, False, "cuda", 8).param_dtype == torch.bfloat16
