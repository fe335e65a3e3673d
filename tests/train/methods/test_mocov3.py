"""dinolite/train/methods/mocov3.py: MoCo v3's heads, momentum encoder, loss, frozen patch projection, config."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.losses import moco_v3_loss
from dinolite.train.methods import mocov3
from dinolite.train.methods.joint_embedding import N_VIEWS
from tests.train.methods.test_joint_embedding import _batch, _views

SMALL = [
    "student.embed_dim=24",
    "student.depth=1",
    "student.num_heads=2",
    "student.patch_size=4",
    "crops.global_crops_size=16",
    "joint_embedding.projector_hidden_dim=16",
    "joint_embedding.projector_out_dim=8",
    "joint_embedding.predictor_hidden_dim=12",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "train.iterations_per_epoch=10",
    "train.device=cpu",
]


def _cfg(*overrides: str):
    return load_config("demo_mocov3", [*SMALL, *overrides])


def _objective(*overrides: str) -> mocov3.MoCoV3Objective:
    torch.manual_seed(0)
    return mocov3.build_objective(_cfg(*overrides))


def test_heads_are_the_releases():
    objective = _objective()
    # 3-layer projector and 2-layer predictor, each ending in a BatchNorm without affine, no Linear with a bias
    projector, predictor = objective.student["projector"], objective.student["predictor"]
    assert [type(m).__name__ for m in projector.layers][-2:] == ["Linear", "GlobalBatchNorm1d"]
    assert sum(isinstance(m, torch.nn.Linear) for m in projector.layers) == 3
    assert not projector.layers.norm2.affine
    assert sum(isinstance(m, torch.nn.Linear) for m in predictor.layers) == 2
    assert not predictor.layers.norm1.affine
    for head in (projector, predictor):
        assert all(m.bias is None for m in head.modules() if isinstance(m, torch.nn.Linear))
    # the momentum encoder: backbone + projector, no predictor, trained by no gradient
    assert list(objective.teacher) == ["backbone", "projector"]
    assert not any(p.requires_grad for p in objective.teacher.parameters())


def _step_queries_keys(objective: mocov3.MoCoV3Objective) -> tuple:
    """The objective's output on a fixed batch, and its two views' queries and keys computed apart."""
    batch = _batch()
    out = objective(batch, 0)
    online = _views(objective, batch)
    with torch.no_grad():
        keys = objective.encode(objective.teacher, *objective._split(batch))
    return out, online, keys


def test_loss_is_queries_against_momentum_keys():
    objective = _objective("mocov3.temperature=0.3")
    out, online, keys = _step_queries_keys(objective)
    expected = moco_v3_loss(online[0]["p"], online[1]["p"], keys[0]["z"], keys[1]["z"], 0.3)
    torch.testing.assert_close(out.loss, expected)
    assert set(out.terms) == {"moco_v3_loss"}
    out.loss.backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert objective.student["predictor"].layers.fc1.weight.grad.abs().sum() > 0


def test_asymmetric_loss_is_one_direction():
    objective = _objective("joint_embedding.symmetric_loss=false")
    out, online, keys = _step_queries_keys(objective)
    torch.testing.assert_close(out.loss, objective.moco_v3.directed(online[0]["p"], keys[1]["z"]))


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_patch_embed_switch(freeze):
    objective = _objective(f"mocov3.freeze_patch_embed={str(freeze).lower()}")
    patch = objective.student["backbone"].patch_embed
    assert all(p.requires_grad != freeze for p in patch.parameters())
    objective(_batch(), 0).loss.backward()
    assert all((p.grad is None) == freeze for p in patch.parameters())
    # every other backbone parameter trains
    assert all(p.requires_grad for n, p in objective.student["backbone"].named_parameters() if "patch_embed" not in n)


def test_momentum_update_uses_the_next_iterations_momentum():
    # the release moves the encoder with m(k) just before the forward of iteration k: after the optimizer
    # step of iteration k - 1, dinolite uses m(k)
    objective = _objective("ema.momentum=0.9", "ema.final_momentum=1.0")
    with torch.no_grad():
        for p in objective.student.parameters():
            if p.requires_grad:
                p.add_(1.0)
    before = {k: v.clone() for k, v in objective.teacher.named_parameters()}
    student = dict(objective.student.named_parameters())
    objective.after_optimizer_step(3)
    m = objective.target_momentum(4)
    assert m != objective.target_momentum(3)
    for name, param in objective.teacher.named_parameters():
        if student[name].requires_grad:
            torch.testing.assert_close(param, m * before[name] + (1 - m) * student[name])
        else:  # the frozen patch projection is the same in both encoders
            torch.testing.assert_close(param, student[name])
    assert objective.schedule_values(4) == {"momentum": m}


def test_cls_of_both_views_monitored():
    out = _objective()(_batch(), 0)
    assert set(out.diagnostics) >= {"backbone_cls", "projector", "predictor", "backbone_cls_views"}
    assert out.diagnostics["backbone_cls_views"].shape[1] == N_VIEWS


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("joint_embedding.target=stopgrad", "invalid value for 'joint_embedding.target': 'stopgrad'"),
        ("mocov3.temperature=0", "mocov3.temperature"),
        ("mocov3.temprature=0.1", "did you mean"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        mocov3.build_objective(_cfg(override))


def test_section_read_only_by_mocov3():
    # another method ignores the mocov3 section's rules (its values are never read)
    load_config("demo_byol", ["mocov3.temperature=0"])
