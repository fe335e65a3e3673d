"""dinolite/train/methods/simclr.py: SimCLR is NT-Xent of the two views' projections."""

from __future__ import annotations

import torch

from dinolite.losses import InfoNCELoss
from dinolite.train.methods import simclr
from tests.train.methods.test_joint_embedding import _batch, _cfg, _views


def test_simclr_is_info_nce_of_the_projections():
    torch.manual_seed(0)
    objective = simclr.build_objective(_cfg("joint_embedding.temperature=0.3"))
    batch = _batch()
    out = objective(batch, iteration=0)
    views = _views(objective, batch)
    expected = InfoNCELoss(0.3)(views[0]["z"], views[1]["z"])
    torch.testing.assert_close(out.loss, expected)
    assert set(out.diagnostics) == {"backbone_cls", "backbone_cls_views", "projector"}
    assert out.diagnostics["projector"].shape == (6, 8)
    # LiDAR's surrogate classes: the backbone CLS of each image's two views, the first being backbone_cls
    pair = out.diagnostics["backbone_cls_views"]
    assert pair.shape == (6, 2, out.diagnostics["backbone_cls"].shape[1]) and not pair.requires_grad
    torch.testing.assert_close(pair[:, 0], out.diagnostics["backbone_cls"])
    torch.testing.assert_close(pair[:, 1], views[1]["cls"].detach())
    out.loss.backward()
    assert objective.student["backbone"].cls_token.grad.abs().sum() > 0
