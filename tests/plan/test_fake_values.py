"""Host reads of fake tensors (dinolite/plan/fake_values.py): true values where they exist, "healthy"
defaults for data, and the calls that need them (AdamW, trunc_normal_) running under fake tensors."""

from __future__ import annotations

import pytest
import torch

from dinolite.plan.fake_values import FiniteValues, HostValues, fake_mode


def test_a_value_computed_from_constants_reads_true():
    host = HostValues()
    with fake_mode(), host:
        step = torch.tensor(0.0)
        step += 1
        step += 1
        correction = 1 - 0.9**step
        assert step.item() == 2.0
        assert correction.item() == pytest.approx(1 - 0.81)
    assert not host.defaults


def test_a_value_of_data_reads_zero_and_false_and_is_counted():
    host = HostValues()
    real = torch.randn(4, 4)
    with fake_mode() as mode, host:
        data = mode.from_tensor(real)
        assert torch.randn(3).sum().item() == 0.0  # random draws are data, not constants
        assert data.sum().item() == 0.0
        assert bool((data > 1).any()) is False
        assert int(data.argmax()) == 0
    assert sum(host.defaults.values()) == 4
    assert all("test_fake_values.py" in site for site in host.defaults)


def test_isfinite_of_fake_data_is_true_and_isnan_false():
    host = HostValues()
    with fake_mode() as mode, host, FiniteValues(host):
        loss = mode.from_tensor(torch.tensor(float("nan")))  # the value is not seen: fake tensors have none
        assert bool(torch.isfinite(loss)) is True
        assert bool(torch.isnan(loss)) is False


def test_without_host_values_fake_reads_fail():
    with fake_mode() as mode:
        data = mode.from_tensor(torch.randn(3))
        with pytest.raises(Exception, match="local_scalar_dense"):
            data.sum().item()


def test_adamw_and_trunc_normal_run_on_fake_tensors():
    host = HostValues()
    with fake_mode(), host:
        layer = torch.nn.Linear(8, 8)
        torch.nn.init.trunc_normal_(layer.weight, std=0.02)  # its rejection loop stops
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
        for _ in range(2):
            layer(torch.randn(2, 8)).sum().backward()
            optimizer.step()  # bias corrections read the true step count (a zero would divide by zero)
        assert optimizer.state[layer.weight]["step"].item() == 2.0
