"""Projector / predictor MLPs: layouts of the published heads; global BatchNorm is BatchNorm on one process
(2 processes against 1: tests/losses/test_distributed_joint_embedding.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.models import GlobalBatchNorm1d, ProjectionMLP


def test_global_batch_norm_is_batch_norm_on_one_process():
    torch.manual_seed(0)
    ours, theirs = GlobalBatchNorm1d(5), nn.BatchNorm1d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2)
        ours.bias.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 5) * 3 + 1
    for module in (ours, theirs):
        module.train()
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    assert set(ours.state_dict()) == set(theirs.state_dict())


def _kinds(mlp: ProjectionMLP) -> list[str]:
    out = []
    for layer in mlp.layers:
        if isinstance(layer, nn.Linear):
            out.append(f"linear{'+b' if layer.bias is not None else ''}")
        elif isinstance(layer, GlobalBatchNorm1d):
            out.append("bn" if layer.affine else "bn-noaffine")
        else:
            out.append(type(layer).__name__.lower())
    return out


def test_layouts_of_the_published_heads():
    # SimCLR: Linear-BN-ReLU-Linear(+bias)
    assert _kinds(ProjectionMLP(16, 32, 8, num_layers=2)) == ["linear", "bn", "relu", "linear+b"]
    # SimSiam projector: 3 layers, BN (no affine) on the output
    simsiam = ProjectionMLP(16, 32, 32, num_layers=3, last_batch_norm=True)
    assert _kinds(simsiam) == ["linear", "bn", "relu", "linear", "bn", "relu", "linear", "bn-noaffine"]
    # one layer: a linear map; no BN when batch_norm=False
    assert _kinds(ProjectionMLP(16, 32, 8, num_layers=1)) == ["linear+b"]
    assert _kinds(ProjectionMLP(16, 32, 8, num_layers=2, batch_norm=False)) == ["linear+b", "relu", "linear+b"]
    # Barlow Twins' and VICReg's released projectors: no bias on the last Linear
    barlow_twins = ProjectionMLP(16, 32, 32, num_layers=3, last_bias=False)
    assert _kinds(barlow_twins) == ["linear", "bn", "relu", "linear", "bn", "relu", "linear"]
    x = torch.randn(4, 16)
    assert simsiam(x).shape == (4, 32)


def test_batch_norm_parameters_are_named_norm():
    # the optimizer exempts "*norm*" parameters from weight decay by name
    names = [n for n, _ in ProjectionMLP(4, 8, 4, num_layers=2).named_parameters()]
    assert names == [
        "layers.fc0.weight",
        "layers.norm0.weight",
        "layers.norm0.bias",
        "layers.fc1.weight",
        "layers.fc1.bias",
    ]


def test_zero_layers_is_the_identity():
    mlp = ProjectionMLP(16, 32, 8, num_layers=0)
    x = torch.randn(3, 16)
    assert torch.equal(mlp(x), x) and mlp.out_dim == 16 and not list(mlp.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionMLP(4, 4, 4, num_layers=-1)
    with pytest.raises(ValueError, match="widths"):
        ProjectionMLP(4, 0, 4)
