"""dinolite/train/methods/siamese.py: SimSiam (stop-gradient) and BYOL (EMA target), one objective."""

from __future__ import annotations

import pytest
import torch

from dinolite.losses import negative_cosine
from dinolite.train.methods import siamese
from tests.train.methods.test_joint_embedding import _batch, _cfg, _views


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_simsiam_loss_and_stop_gradient(stop_gradient):
    torch.manual_seed(0)
    cfg = _cfg("joint_embedding.predictor_layers=2", f"joint_embedding.stop_gradient={str(stop_gradient).lower()}")
    objective = siamese.build_objective(cfg)
    assert len(objective.teacher) == 0 and list(objective.student) == ["backbone", "projector", "predictor"]
    batch = _batch()
    views = _views(objective, batch)
    expected = 0.5 * negative_cosine(views[0]["p"], views[1]["z"]) + 0.5 * negative_cosine(views[1]["p"], views[0]["z"])
    out = objective(batch, 0)
    torch.testing.assert_close(out.loss, expected)
    # gradient through the target branch only without stop-gradient: the projector's last layer gets a
    # different gradient when z also receives one
    out.loss.backward()
    with_switch = objective.student["projector"].layers.fc1.weight.grad.clone()
    objective.zero_grad()
    views = _views(objective, batch)
    detached = 0.5 * negative_cosine(views[0]["p"], views[1]["z"].detach()) + 0.5 * negative_cosine(
        views[1]["p"], views[0]["z"].detach()
    )
    detached.backward()
    same = torch.allclose(with_switch, objective.student["projector"].layers.fc1.weight.grad)
    assert same == stop_gradient


def test_byol_ema_target_without_predictor():
    torch.manual_seed(0)
    cfg = _cfg(
        "joint_embedding.predictor_layers=2",
        "joint_embedding.target=ema",
        "ema.momentum=0.9",
        "ema.final_momentum=1.0",
    )
    objective = siamese.build_objective(cfg)
    assert list(objective.teacher) == ["backbone", "projector"]
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    batch = _batch()
    out = objective(batch, 0)
    out.loss.backward()
    # the loss compares the online prediction with the target's projection (no gradient into the target)
    assert all(p.grad is None for p in objective.teacher.parameters())
    with torch.no_grad():
        for p in objective.student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    student = dict(objective.student.named_parameters())
    objective.after_optimizer_step(0)  # momentum 0.9 at iteration 0 (cosine 0.9 -> 1 over 10)
    for name, param in objective.teacher.named_parameters():
        torch.testing.assert_close(param, 0.9 * before[name] + 0.1 * student[name])
    assert objective.schedule_values(0)["momentum"] == pytest.approx(0.9)
    assert objective.schedule_values(10)["momentum"] == pytest.approx(1.0)
