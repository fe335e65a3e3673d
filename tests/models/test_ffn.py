"""SwiGLU feed-forward: DINOv2's hidden size rule and the formula."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from dinolite.models import swiglu_hidden_dim
from tests.models.test_vision_transformer import tiny


def test_swiglu_hidden_size_and_formula():
    assert swiglu_hidden_dim(1536 * 4) == 4096  # ViT-g
    assert swiglu_hidden_dim(1024 * 4) == 2736  # ViT-L: int(2730.67)=2730 -> 2736
    assert swiglu_hidden_dim(384 * 4) == 1024
    model = tiny(ffn_layer="swiglu", embed_dim=48, num_heads=4)
    ffn = model.blocks[0].mlp
    assert ffn.hidden_features == swiglu_hidden_dim(192) == 128
    x = torch.randn(3, 5, 48)
    w1, w2 = ffn.w12.weight.chunk(2)
    b1, b2 = ffn.w12.bias.chunk(2)
    ref = (F.silu(x @ w1.T + b1) * (x @ w2.T + b2)) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), ref)
