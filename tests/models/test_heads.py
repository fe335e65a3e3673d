"""DINOHead: layout, formula, weight-norm equivalence, DINOv2 conversion, build_heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dinolite.config import load_config
from dinolite.models import DINOHead, build_heads, dinov2_head_state_dict


def test_layout_and_shapes():
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16, nlayers=3)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (64, 32),
        "mlp.0.bias": (64,),
        "mlp.2.weight": (64, 64),
        "mlp.2.bias": (64,),
        "mlp.4.weight": (16, 64),
        "mlp.4.bias": (16,),
        "last_layer.weight": (100, 16),
    }
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert head(torch.randn(5, 32)).shape == (5, 100)
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 100)  # patch tokens


def test_single_layer_and_bad_sizes():
    head = DINOHead(32, 10, hidden_dim=64, bottleneck_dim=16, nlayers=1)
    assert isinstance(head.mlp, nn.Linear) and head.mlp.weight.shape == (16, 32)
    assert len(DINOHead(32, 10, hidden_dim=64, bottleneck_dim=16, nlayers=4).mlp) == 7
    with pytest.raises(ValueError, match="nlayers=0"):
        DINOHead(32, 10, nlayers=0)
    with pytest.raises(ValueError, match="out_dim=0"):
        DINOHead(32, 0)


def test_forward_formula_and_cosine_range():
    torch.manual_seed(0)
    head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4, nlayers=2)
    x = torch.randn(6, 8)
    z = head.mlp[2](F.gelu(head.mlp[0](x)))
    z = z / z.norm(dim=1, keepdim=True)
    w = head.last_layer.weight / head.last_layer.weight.norm(dim=1, keepdim=True)
    expected = z @ w.T
    out = head(x)
    torch.testing.assert_close(out, expected)
    assert out.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(12, 1) * 10 + 0.1)  # row scale must not matter
    torch.testing.assert_close(head(x), expected)


def test_equals_weight_norm_with_unit_gain():
    """DINOv2 uses weight_norm(Linear) with g filled with 1 (and frozen): same logits."""
    torch.manual_seed(0)
    head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(4, 12, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.fill_(1.0)  # g
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight)  # v
    z = F.normalize(torch.randn(5, 4), dim=-1)
    torch.testing.assert_close(head.last_layer(z), reference(z))


def test_prototypes_are_one_plain_parameter_with_gradient():
    head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4)
    names = [n for n, _ in head.named_parameters()]
    assert "last_layer.weight" in names and not any("weight_g" in n or "weight_v" in n for n in names)
    assert not nn.utils.parametrize.is_parametrized(head.last_layer)
    head(torch.randn(3, 8)).sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_init():
    torch.manual_seed(0)
    head = DINOHead(256, 4096, hidden_dim=512, bottleneck_dim=128)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            assert abs(module.weight.std().item() - 0.02) < 0.002
            assert module.bias is None or torch.count_nonzero(module.bias) == 0
    assert head.last_layer.bias is None


def test_dinov2_head_conversion():
    torch.manual_seed(0)
    head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4)
    v = torch.randn(12, 4) * 3
    dinov2 = {k: t.clone() for k, t in head.state_dict().items() if not k.startswith("last_layer")}
    dinov2["last_layer.weight_g"] = torch.ones(12, 1)
    dinov2["last_layer.weight_v"] = v
    converted = dinov2_head_state_dict(dinov2)
    head.load_state_dict(converted, strict=True)
    torch.testing.assert_close(head.last_layer.weight, F.normalize(v, dim=1))


def test_build_heads_shared_and_separate():
    cfg = load_config("demo", ["dino.head_n_prototypes=256"])
    heads = build_heads(cfg.dino, cfg.ibot, embed_dim=96)
    assert heads["dino_head"] is heads["ibot_head"]
    assert heads["dino_head"].last_layer.weight.shape == (256, 64)
    cfg = load_config("demo", ["ibot.separate_head=true", "ibot.head_n_prototypes=128", "ibot.head_nlayers=2"])
    heads = build_heads(cfg.dino, cfg.ibot, embed_dim=96)
    assert heads["dino_head"] is not heads["ibot_head"]
    assert heads["ibot_head"].last_layer.weight.shape == (128, 64)
    assert len(heads["ibot_head"].mlp) == 3
    assert heads["ibot_head"].mlp[0].weight.shape == (256, 96)


def test_float16_normalisation_is_finite():
    head = DINOHead(8, 12, hidden_dim=16, bottleneck_dim=4).half()
    out = head(torch.zeros(2, 8, dtype=torch.float16))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
