"""Stochastic depth: per-block rates, per-sample DropPath, and the batch-subset residual."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.stochastic_depth import DropPath, drop_add_residual_stochastic_depth, drop_path_rates
from tests.models.test_vision_transformer import tiny


def test_drop_path_rates():
    assert drop_path_rates(0.3, 4, uniform=True) == [0.3] * 4
    assert drop_path_rates(0.3, 4, uniform=False) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = tiny(depth=4, drop_path_rate=0.3, drop_path_uniform=False)
    assert [b.sample_drop_ratio for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="drop_path_rate"):
        drop_path_rates(1.0, 4, uniform=True)


def test_drop_path_per_sample():
    torch.manual_seed(0)
    layer = DropPath(0.5)
    x = torch.randn(64, 3, 4) + 10.0
    assert torch.equal(layer.eval()(x), x)
    out = layer.train()(x)
    kept = (out != 0).flatten(1).all(1)
    dropped = (out == 0).flatten(1).all(1)
    assert torch.all(kept | dropped) and 0 < kept.sum() < 64
    torch.testing.assert_close(out[kept], x[kept] * 2.0)


def test_drop_add_residual_on_a_subset():
    torch.manual_seed(0)
    x = torch.zeros(10, 2, 3)
    out = drop_add_residual_stochastic_depth(x, lambda t: torch.ones_like(t), sample_drop_ratio=0.3)
    changed = out.flatten(1).ne(0).all(1)
    assert changed.sum() == 7  # int(10 * 0.7) samples get the residual ...
    torch.testing.assert_close(out[changed], torch.full((7, 2, 3), 10 / 7))  # ... scaled by B / subset
    assert torch.count_nonzero(out[~changed]) == 0
