"""fp16 loss scaling (dinolite/train/loss_scaling.py): the scaling arithmetic, and one decision for all
ranks when FSDP2 shards the gradients (2 gloo processes, an overflow in one rank's shard only)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dinolite.fsdp.clipping import clip_grad_norm_
from dinolite.train.loss_scaling import LossScaler
from tests.gloo_ranks import run_on_ranks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))


def _loss(model: nn.Module) -> torch.Tensor:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    return model(x).pow(2).mean()


def test_unscaled_gradients_equal_unscaled_backward():
    reference, scaled = _model(), _model()
    _loss(reference).backward()
    scaler = LossScaler(enabled=True, init_scale=2.0**10)
    scaler.scale_loss(_loss(scaled)).backward()
    scaler.unscale_(scaled.parameters())
    for a, b in zip(scaled.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)  # a power-of-two scale is exact


def test_overflow_skips_and_backs_off_then_grows_after_the_interval():
    scaler = LossScaler(enabled=True, init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    assert scaler.update({"backbone": math.inf, "head": 1.0}) is False
    assert (scaler.scale, scaler.growth_tracker, scaler.skipped_steps) == (4.0, 0, 1)
    assert scaler.update({"backbone": math.nan}) is False and scaler.scale == 2.0
    for _ in range(2):
        assert scaler.update({"backbone": 1.0}) is True
    assert scaler.scale == 2.0
    assert scaler.update({"backbone": 1.0}) is True and scaler.scale == 4.0  # third clean step: grow
    restored = LossScaler(enabled=True)
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict() == {"scale": 4.0, "growth_tracker": 0, "skipped_steps": 2}


def test_disabled_scaler_changes_nothing():
    scaler = LossScaler(enabled=False)
    loss = torch.tensor(3.0)
    assert scaler.scale_loss(loss) is loss
    assert scaler.update({"backbone": math.inf}) is True  # bf16/fp32: the non-finite check is the loop's


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaler(enabled=True, backoff_factor=1.5)


def _steps_on_rank(rank: int, world: int) -> list[dict]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    scaler = LossScaler(enabled=True, init_scale=2.0**8, growth_interval=1)
    results = []
    for step in range(2):
        model.zero_grad()
        scaler.scale_loss(_loss(model)).backward()
        if step == 0 and rank == 1:  # an overflow in rank 1's shard of one gradient only
            next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
        scaler.unscale_(model.parameters())
        norm = clip_grad_norm_(list(model.parameters()), max_norm=0.0)
        stepped = scaler.update({"model": float(norm)})
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        results.append({"stepped": stepped, "scale": scaler.scale, "grads": grads})
    return results


@pytest.mark.numerics
def test_sharded_gradients_give_every_rank_the_same_decision(tmp_path: Path):
    ranks = run_on_ranks(_steps_on_rank, 2, tmp_path)
    # step 0: the inf sits in rank 1's shard, yet both ranks skip and back off together
    assert [r[0]["stepped"] for r in ranks] == [False, False]
    assert [r[0]["scale"] for r in ranks] == [2.0**7, 2.0**7]
    # step 1: clean on both; the unscaled full gradients equal one process's unscaled backward
    assert [r[1]["stepped"] for r in ranks] == [True, True] and ranks[0][1]["scale"] == 2.0**8
    reference = _model()
    _loss(reference).backward()
    for name, param in reference.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r[1]["grads"][name], param.grad, rtol=1e-6, atol=1e-7)


def test_the_scale_starts_where_dinov2s_sharded_grad_scaler_does():
    """DINOv2 builds ``ShardedGradScaler()`` with torch's defaults (dinov2/train/ssl_meta_arch.py)."""
    import inspect

    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    torch_defaults = inspect.signature(ShardedGradScaler.__init__).parameters
    ours = LossScaler(enabled=True)
    for name in ("init_scale", "growth_factor", "backoff_factor", "growth_interval"):
        expected = torch_defaults[name].default
        assert getattr(ours, "scale" if name == "init_scale" else name) == expected, name
