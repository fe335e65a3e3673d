"""LeJEPA as a registered method (dinolite/train/methods/lejepa.py): the loss on the projections of every
view, the slices of each iteration, the projector's one BatchNorm over all views, the release's projector
at ViT-B/16 scale and the config rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.config import ConfigError, load_config
from dinolite.losses.lejepa_loss import LeJEPALoss
from dinolite.losses.sigreg_loss import slice_directions
from dinolite.models.projector import GlobalBatchNorm1d
from dinolite.train.methods import get_method
from dinolite.train.methods.joint_embedding import build_projector

SMALL = [
    "student.embed_dim=24",
    "student.depth=1",
    "student.num_heads=2",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "joint_embedding.projector_hidden_dim=16",
    "joint_embedding.projector_out_dim=8",
    "lejepa.num_slices=12",
    "train.iterations_per_epoch=10",
]


def _batch(n_images: int, n_local: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "collated_global_crops": torch.randn(2 * n_images, 3, 16, 16, generator=g),
        "collated_local_crops": torch.randn(n_local * n_images, 3, 8, 8, generator=g)
        if n_local
        else torch.empty(0, 3, 0, 0),
    }


@pytest.mark.parametrize("n_local", [0, 3])
def test_the_loss_is_lejepa_of_every_views_projection_with_the_iterations_slices(n_local):
    torch.manual_seed(0)
    overrides = [*SMALL, f"crops.local_crops_number={n_local}", "lejepa.sigreg_weight=0.2", "lejepa.slice_seed=5"]
    objective = get_method("lejepa").build_objective(load_config("demo_lejepa", overrides))
    batch = _batch(6, n_local)
    out = objective(batch, iteration=7)
    global_views, local_views = objective._split(batch)
    with torch.no_grad():
        cls = objective._cls(objective.student["backbone"], global_views, local_views)
        z = objective.student["projector"](torch.cat(cls)).reshape(2 + n_local, 6, -1)  # every view, one call
        expected = LeJEPALoss(0.2)(z, 2, slice_directions(8, 12, seed=5 + 7))
    torch.testing.assert_close(out.loss.detach(), expected)
    assert set(out.terms) == {"lejepa_loss", "lejepa_prediction", "lejepa_sigreg"}
    torch.testing.assert_close(out.terms["lejepa_prediction"] + out.terms["lejepa_sigreg"], out.loss.detach())
    assert set(out.diagnostics) == {"backbone_cls", "backbone_cls_views", "projector"}
    assert not len(objective.teacher)  # no EMA teacher
    out.loss.backward()
    assert objective.student["projector"].layers.fc0.weight.grad.abs().sum() > 0
    assert objective.student["backbone"].cls_token.grad.abs().sum() > 0


def test_each_iteration_draws_its_own_slices_the_same_on_every_call():
    objective = get_method("lejepa").build_objective(load_config("demo_lejepa", SMALL))
    assert torch.equal(objective.directions(8, 3), objective.directions(8, 3))
    assert not torch.equal(objective.directions(8, 3), objective.directions(8, 4))
    assert objective.directions(8, 3).shape == (8, 12)


def test_the_projector_normalises_all_views_together():
    """The release calls its projector once on every view: BatchNorm statistics over all of them, so a
    view's projection depends on the other views (per-view BatchNorm would not)."""
    torch.manual_seed(0)
    objective = get_method("lejepa").build_objective(load_config("demo_lejepa", [*SMALL, "crops.local_crops_number=2"]))
    batch = _batch(4, 2)
    global_views, local_views = objective._split(batch)
    first = objective.encode(objective.student, global_views, local_views)[0]["z"]
    local_views[0] = local_views[0] + 3.0
    assert not torch.allclose(first, objective.encode(objective.student, global_views, local_views)[0]["z"])


def test_the_release_projector_and_values_at_vit_b16_scale():
    """MINIMAL.md's projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear (2048 wide); the README's 2 + 6
    views, 224 / 98 px (96: 6 patches of 16), scales (0.3, 1) / (0.05, 0.3); 1024 slices, 17 knots on [0, 3]."""
    cfg = load_config("vitb16_lejepa")
    with torch.device("meta"):
        projector = build_projector(cfg, 768)
    kinds = [type(layer) for layer in projector.layers.children()]
    assert kinds == [nn.Linear, GlobalBatchNorm1d, nn.ReLU, nn.Linear, GlobalBatchNorm1d, nn.ReLU, nn.Linear]
    assert projector.layers.fc0.out_features == 2048
    assert (cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number) == (224, 96, 6)
    assert list(cfg.crops.global_crops_scale) == [0.3, 1.0] and list(cfg.crops.local_crops_scale) == [0.05, 0.3]
    assert (cfg.lejepa.num_slices, cfg.lejepa.t_max, cfg.lejepa.n_points) == (1024, 3.0, 17)
    assert get_method("lejepa").head_names(cfg) == ("projector",)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lejepa.sigreg_weight=1.5", "'lejepa.sigreg_weight': 1.5; must be in [0, 1]"),
        ("lejepa.num_slices=0", "'lejepa.num_slices': 0"),
        ("lejepa.t_max=0", "'lejepa.t_max': 0"),
        ("lejepa.n_points=1", "'lejepa.n_points': 1"),
        ("joint_embedding.predictor_layers=2", "train.method=lejepa has no predictor"),
        ("joint_embedding.symmetric_loss=false", "train.method=lejepa has no asymmetric"),
    ],
)
def test_config_rules_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo_lejepa", [override])
    assert message in str(info.value)


def test_a_typo_in_the_section_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"'lejepa\.sigreg_weigth'.*did you mean 'lejepa\.sigreg_weight'"):
        load_config("demo_lejepa", ["lejepa.sigreg_weigth=0.1"])
