"""dinolite/train/methods/directclr.py: InfoNCE on the first d0 backbone dimensions, no projector."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError
from dinolite.losses import BarlowTwinsLoss, InfoNCELoss
from dinolite.train.methods import barlow_twins, directclr
from tests.train.methods.test_joint_embedding import _batch, _cfg, _views


def test_barlow_twins_and_directclr():
    torch.manual_seed(0)
    bt = barlow_twins.build_objective(_cfg("joint_embedding.lambda_offdiag=0.01"))
    batch = _batch()
    views = _views(bt, batch)
    torch.testing.assert_close(bt(batch, 0).loss, BarlowTwinsLoss(0.01)(views[0]["z"], views[1]["z"]))
    cfg = _cfg("joint_embedding.projector_layers=0", "joint_embedding.directclr_d0=5")
    dclr = directclr.build_objective(cfg)
    views = _views(dclr, batch)
    torch.testing.assert_close(dclr(batch, 0).loss, InfoNCELoss(0.1)(views[0]["cls"][:, :5], views[1]["cls"][:, :5]))
    assert list(dclr.student) == ["backbone"]
    with pytest.raises(ConfigError, match="projector_layers"):
        directclr.build_objective(_cfg())
    with pytest.raises(ConfigError, match="directclr_d0"):
        directclr.build_objective(_cfg("joint_embedding.projector_layers=0", "joint_embedding.directclr_d0=25"))
