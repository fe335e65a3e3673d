"""The joint-embedding objectives: losses composed as the papers say, switches, EMA target, multi-crop pairs."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.losses import negative_cosine
from dinolite.models import build_backbone
from dinolite.models.info import forward_flops
from dinolite.train.methods import (
    barlow_twins,
    directclr,
    joint_embedding,
    siamese,
    simclr,
)

SMALL = [
    "student.embed_dim=24",
    "student.depth=1",
    "student.num_heads=2",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=0",
    "joint_embedding.projector_hidden_dim=16",
    "joint_embedding.projector_out_dim=8",
    "joint_embedding.predictor_hidden_dim=4",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "joint_embedding.projector_layers=2",
    "joint_embedding.temperature=0.1",
    "train.iterations_per_epoch=10",
]


def _cfg(*overrides: str):
    return load_config("demo_simclr", [*SMALL, *overrides])


def _batch(n_images=6, n_local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"collated_global_crops": torch.randn(2 * n_images, 3, 16, 16, generator=g)}
    batch["collated_local_crops"] = (
        torch.randn(n_local * n_images, 3, 8, 8, generator=g) if n_local else torch.empty(0, 3, 0, 0)
    )
    return batch


def _views(objective, batch):
    global_views, local_views = objective._split(batch)
    return objective.encode(objective.student, global_views, local_views)


def test_multicrop_pairs_every_small_view_with_both_large_views():
    torch.manual_seed(0)

    class Recording(simclr.SimCLRObjective):
        def pair_loss(self, a, b):
            self.pairs.append((a["cls"].shape[0], a["index"], b["index"]))
            return super().pair_loss(a, b)

        def encode(self, network, global_views, local_views):
            outputs = super().encode(network, global_views, local_views)
            for i, o in enumerate(outputs):
                o["index"] = i
            return outputs

    base = simclr.build_objective(_cfg())
    objective = Recording(base.student["backbone"], base.student["projector"])
    objective.pairs = []
    objective(_batch(n_local=2), 0)
    assert [(i, j) for _, i, j in objective.pairs] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]


@pytest.mark.parametrize("target", ["stopgrad", "ema"])
def test_asymmetric_loss_source_predicts_target_and_locals_are_sources_only(target):
    """Wang et al. 2022: with symmetric_loss=false view 0 is the source (predictor side) and view 1 the
    target; each local crop predicts both global views and is never a target."""
    torch.manual_seed(0)
    cfg = _cfg(
        "joint_embedding.predictor_layers=2",
        "joint_embedding.symmetric_loss=false",
        f"joint_embedding.target={target}",
        "crops.local_crops_number=2",
    )
    objective = siamese.build_objective(cfg)
    batch = _batch(n_local=2)
    views = _views(objective, batch)
    if target == "ema":  # the targets come from the EMA network
        for view, t in zip(views, objective.encode(objective.teacher, *objective._split(batch))):
            view["target_z"] = t["z"]
    tz = [v.get("target_z", v["z"]) for v in views]
    pairs = [(0, 1), (2, 0), (2, 1), (3, 0), (3, 1)]  # (source, target); locals are views 2 and 3
    expected = torch.stack([negative_cosine(views[s]["p"], tz[t]) for s, t in pairs]).mean()
    out = objective(batch, 0)
    torch.testing.assert_close(out.loss, expected)
    # the symmetric loss of the same networks is another number (view 1 also predicts view 0)
    symmetric = siamese.build_objective(cfg)
    symmetric.load_state_dict(objective.state_dict())
    symmetric.symmetric_loss = True
    assert not torch.allclose(symmetric(batch, 0).loss, out.loss)


def test_asymmetric_loss_is_refused_by_methods_without_sides():
    for module in (simclr, barlow_twins):
        with pytest.raises(ConfigError, match="symmetric_loss=false"):
            module.build_objective(_cfg("joint_embedding.symmetric_loss=false"))
    with pytest.raises(ConfigError, match="symmetric_loss=false"):
        directclr.build_objective(_cfg("joint_embedding.symmetric_loss=false", "joint_embedding.projector_layers=0"))

    class SymmetricOnly(joint_embedding.JointEmbeddingObjective):
        def pair_loss(self, a, b):
            return negative_cosine(a["z"], b["z"])

    backbone = simclr.build_objective(_cfg()).student["backbone"]
    with pytest.raises(ConfigError, match="SymmetricOnly has no asymmetric"):
        SymmetricOnly(backbone, symmetric_loss=False)


def test_views_from_config_and_bad_recipe():
    cfg = _cfg(
        "crops.local_crops_number=2", "joint_embedding.view2.solarize_p=0.5", "joint_embedding.view1.blur_kernel_size=5"
    )
    views = joint_embedding.build_views(cfg)
    assert views.views[1].solarize_p == 0.5 and views.views[0].blur_kernel_size == 5
    assert views.views[1].blur_kernel_size == 3 and views.local_views_number == 2 and views.local_view.size == 8
    out = views(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in out["global_crops"] + out["local_crops"]] == [16, 16, 8, 8]
    with pytest.raises(ConfigError, match="joint_embedding.view2"):
        joint_embedding.build_views(_cfg("joint_embedding.view2.grayscale_p=2"))
    assert joint_embedding.head_names(_cfg("joint_embedding.predictor_layers=2")) == ("projector", "predictor")
    assert joint_embedding.head_names(_cfg("joint_embedding.projector_layers=0")) == ()


def test_training_flops_count_backbone_and_heads():
    cfg = _cfg("joint_embedding.projector_layers=2", "joint_embedding.predictor_layers=2", "joint_embedding.target=ema")
    flops = joint_embedding.training_flops(cfg)
    backbone = build_backbone(cfg.student, img_size=16)
    assert flops["flops_global_crop"] == forward_flops(backbone, 16)
    # projector 24 -> 16 -> 8 and predictor 8 -> 4 -> 8: linear layers' MACs (+ BatchNorm's few)
    linear = 24 * 16 + 16 * 8 + 8 * 4 + 4 * 8
    assert 2 * linear <= flops["flops_heads_per_view"] <= 2 * linear * 1.2
    # student forward + backward on 2 views, EMA target forward (no predictor) on 2 views
    g, h = flops["flops_global_crop"] / 2, flops["flops_heads_per_view"] / 2
    assert flops["flops_student_per_image"] == 2 * 3 * 2 * (g + h)
    assert flops["flops_teacher_per_image"] < 2 * 2 * (g + h) and flops["flops_teacher_per_image"] > 2 * 2 * g


@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "simsiam", "byol", "directclr"])
def test_presets_load_and_name_their_method(method):
    for preset in (f"demo_{method}", f"vitb16_{method}"):
        cfg = load_config(preset)
        assert cfg.train.method == method
    vit = load_config(f"vitb16_{method}")
    # MoCo v3's ViT recipe: AdamW lr 1.5e-4 per 256 images, frozen random patch projection, batch 4096
    assert vit.optim.base_lr == pytest.approx(6e-4) and vit.optim.scaling_rule == "linear_wrt_1024"
    assert vit.optim.patch_embed_lr_mult == 0.0 and vit.train.batch_size_per_gpu * 32 == 4096
