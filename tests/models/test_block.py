"""A transformer block's stochastic depth: residual branches skipped in training only."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.block import Block


@pytest.mark.parametrize("rate", [0.05, 0.5])  # DropPath branch and batch-subset branch
def test_block_drop_path_train_vs_eval(rate):
    torch.manual_seed(0)
    block = Block(16, 2, init_values=1.0, drop_path=rate)
    x = torch.randn(32, 5, 16)
    block.eval()
    assert torch.equal(block(x), block(x))
    full = block(x)
    block.train()
    out = block(x)
    same = torch.isclose(out, full, atol=1e-6).flatten(1).all(1)
    assert not same.all()  # some samples skipped a residual branch
    no_drop = Block(16, 2, init_values=1.0, drop_path=0.0)
    no_drop.load_state_dict(block.state_dict())
    torch.testing.assert_close(no_drop.train()(x), no_drop.eval()(x))
