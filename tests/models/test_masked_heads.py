"""Heads of the masked methods: SimMIM's pixel layout (as pixel shuffle), MSN's projection head and prototypes."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.masked_heads import MSNProjectionHead, Prototypes, SimMIMHead


def test_simmim_head_lays_out_pixels_like_pixel_shuffle():
    head = SimMIMHead(embed_dim=12, patch_size=2, in_chans=3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(12))
        head.proj.bias.zero_()
    tokens = torch.arange(2 * 4 * 12, dtype=torch.float32).reshape(2, 4, 12)  # 2x2 grid of tokens
    image = head(tokens, (2, 2))
    assert image.shape == (2, 3, 4, 4)
    # pixel (c, i, j) of patch (r, s) is feature c*p*p + i*p + j of token r*w + s
    for b, c, r, s, i, j in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 0, 1, 1), (0, 1, 0, 1, 0, 1)]:
        assert image[b, c, r * 2 + i, s * 2 + j] == tokens[b, r * 2 + s, c * 4 + i * 2 + j]


def test_msn_head_and_prototypes():
    head = MSNProjectionHead(48, hidden_dim=64, out_dim=16)
    assert head(torch.randn(5, 48)).shape == (5, 16)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in MSNProjectionHead(48, 64, 16, use_bn=False).modules())
    prototypes = Prototypes(32, 16)
    assert prototypes().shape == (32, 16) and float(prototypes.weight.detach().abs().max()) <= 0.25


def test_msn_head_global_batch_norm_is_the_same_module_on_one_process():
    """``head_bn=global`` swaps in GlobalBatchNorm1d: the same keys, and on one process the same function."""
    torch.manual_seed(0)
    per_rank = MSNProjectionHead(6, 8, 4)
    global_bn = MSNProjectionHead(6, 8, 4, head_bn="global")
    global_bn.load_state_dict(per_rank.state_dict())
    x = torch.randn(5, 6)
    torch.testing.assert_close(global_bn(x), per_rank(x), rtol=0, atol=0)
    assert type(global_bn.mlp[1]).__name__ == "GlobalBatchNorm1d" and type(per_rank.mlp[1]) is torch.nn.BatchNorm1d
    with pytest.raises(ValueError, match="head_bn must be one of per_rank, global, got 'sync'"):
        MSNProjectionHead(6, 8, 4, head_bn="sync")
