"""VICReg as a registered method (dinolite/train/methods/vicreg.py): its loss on the expander outputs of the
two views, the weighted terms it logs, the release's expander at ViT-B/16 scale and its config rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.config import ConfigError, load_config
from dinolite.losses.vicreg_loss import VICRegLoss
from dinolite.models.projector import GlobalBatchNorm1d
from dinolite.train.methods import get_method, vicreg
from dinolite.train.methods.joint_embedding import build_projector

SMALL = [
    "student.embed_dim=24",
    "student.depth=1",
    "student.num_heads=2",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "joint_embedding.projector_hidden_dim=16",
    "joint_embedding.projector_out_dim=8",
    "train.iterations_per_epoch=10",
]


def _batch(n_images: int, n_local: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "collated_global_crops": torch.randn(2 * n_images, 3, 16, 16, generator=g),
        "collated_local_crops": torch.randn(n_local * n_images, 3, 8, 8, generator=g)
        if n_local
        else torch.empty(0, 3, 0, 0),
    }


@pytest.mark.parametrize("n_local", [0, 2])
def test_the_loss_is_vicreg_of_the_expander_outputs_and_its_terms_are_logged(n_local):
    torch.manual_seed(0)
    cfg = load_config("demo_vicreg", [*SMALL, f"crops.local_crops_number={n_local}", "vicreg.covariance_weight=2"])
    objective = get_method("vicreg").build_objective(cfg)
    batch = _batch(6, n_local)
    out = objective(batch, iteration=0)
    global_views, local_views = objective._split(batch)
    views = objective.encode(objective.student, global_views, local_views)
    loss = VICRegLoss(25.0, 25.0, 2.0)
    # the two large views with each other, then every small view with each large one (multi-crop pairs)
    pairs = [(0, 1)] + [(g, small) for small in range(2, 2 + n_local) for g in (0, 1)]
    expected = torch.stack([loss(views[i]["z"], views[j]["z"]) for i, j in pairs]).mean()
    torch.testing.assert_close(out.loss, expected)
    assert set(out.terms) == {"vicreg_invariance", "vicreg_variance", "vicreg_covariance"}
    torch.testing.assert_close(sum(out.terms.values()), out.loss)
    assert set(out.diagnostics) == {"backbone_cls", "backbone_cls_views", "projector"} and not len(objective.teacher)
    out.loss.backward()
    assert objective.student["projector"].layers.fc0.weight.grad.abs().sum() > 0


def test_the_release_expander_at_vit_b16_scale():
    """facebookresearch/vicreg's --mlp 8192-8192-8192: Linear-BN-ReLU, Linear-BN-ReLU, Linear."""
    cfg = load_config("vitb16_vicreg")
    with torch.device("meta"):
        expander = build_projector(cfg, 768)
    layers = list(expander.layers.children())
    kinds = [type(layer) for layer in layers]
    assert kinds == [nn.Linear, GlobalBatchNorm1d, nn.ReLU, nn.Linear, GlobalBatchNorm1d, nn.ReLU, nn.Linear]
    assert [(layer.in_features, layer.out_features) for layer in layers if isinstance(layer, nn.Linear)] == [
        (768, 8192),
        (8192, 8192),
        (8192, 8192),
    ]
    assert (cfg.vicreg.invariance_weight, cfg.vicreg.variance_weight, cfg.vicreg.covariance_weight) == (25, 25, 1)
    assert get_method("vicreg").head_names(cfg) == ("projector",)
    assert cfg.vicreg.projector_last_bias is False  # main_vicreg.py:231


@pytest.mark.parametrize("last_bias", [True, False])
def test_projector_last_bias_drops_the_expanders_last_bias(last_bias):
    cfg = load_config("demo_vicreg", [*SMALL, f"vicreg.projector_last_bias={str(last_bias).lower()}"])
    objective = vicreg.build_objective(cfg)
    assert ("projector.layers.fc2.bias" in dict(objective.student.named_parameters())) is last_bias


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vicreg.variance_weight=-1", "'vicreg.variance_weight': -1.0; must be >= 0"),
        ("joint_embedding.predictor_layers=2", "train.method=vicreg has no predictor"),
        ("joint_embedding.symmetric_loss=false", "VICReg's loss has no source and target sides"),
    ],
)
def test_vicreg_rules_fire_for_vicreg_only(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("demo_vicreg", [override])
    assert message in str(info.value)
    load_config("demo_simsiam", [override])  # SimSiam has a predictor and an asymmetric loss


def test_vicreg_registers_its_section_and_the_familys():
    spec = get_method("vicreg")
    assert [section.name for section in spec.config_sections] == ["joint_embedding", "vicreg"]
    assert spec is vicreg.METHOD and spec.eval_network == "student" and spec.demo_preset == "demo_vicreg"
