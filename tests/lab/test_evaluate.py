"""The lab's end-of-run measurements read the feature set a run names: CLS, or the mean patch token."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import load_config
from dinolite.data.digits import prepare_digits
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.eval.knn import knn_classify
from dinolite.eval.transforms import build_eval_transform
from dinolite.lab.evaluate import (
    KNN_TEMPERATURE,
    EvalData,
    feature_columns,
    measure_network,
    random_init_backbone,
    random_init_baseline_path,
)
from dinolite.lab.matrix import Measurements
from dinolite.monitor.metrics import rankme

TINY = ["student.embed_dim=32", "student.depth=2", "student.num_heads=2", "crops.global_crops_size=16"]


def test_feature_columns_of_the_probe_layout():
    dim, n_blocks = 3, 2
    # [cls_1 | cls_2 | avgpool] with recognisable values
    layout = torch.cat([torch.full((4, dim), 1.0), torch.full((4, dim), 2.0), torch.full((4, dim), 3.0)], dim=1)
    assert torch.equal(feature_columns(layout, n_blocks, dim, "cls"), torch.full((4, dim), 2.0))
    assert torch.equal(feature_columns(layout, n_blocks, dim, "avgpool"), torch.full((4, dim), 3.0))


def test_baseline_cache_is_per_feature_set_and_keeps_the_cls_name(tmp_path):
    cfg = load_config("demo", TINY)
    cls = random_init_baseline_path(cfg, tmp_path)
    assert random_init_baseline_path(cfg, tmp_path, "cls") == cls
    assert random_init_baseline_path(cfg, tmp_path, "avgpool") != cls


def test_later_student_keys_at_their_defaults_keep_the_cached_baselines_names(tmp_path):
    """student.pos_embed / weight_init / sincos_order (and any key added later) came after baselines were
    cached: at their defaults they leave the key alone (the demo's name below is the one the committed lab
    runs were cached under)."""
    demo = load_config("demo")
    assert random_init_baseline_path(demo, tmp_path).name == "random_init_2c1d5a91ec5e.json"
    ijepa_init = load_config("demo", ["student.weight_init=ijepa"])
    sincos = load_config("demo", ["student.pos_embed=sincos"])
    column_first = load_config("demo", ["student.pos_embed=sincos", "student.sincos_order=column_first"])
    names = {random_init_baseline_path(c, tmp_path).name for c in (demo, ijepa_init, sincos, column_first)}
    assert len(names) == 4  # another initialisation or position table is another baseline


@pytest.mark.parametrize("features", ["cls", "avgpool"])
def test_knn_and_spectrum_read_the_named_features(tmp_path, features):
    digits = prepare_digits(tmp_path / "digits", size=16)
    cfg = load_config("demo", TINY)
    backbone = random_init_backbone(cfg)
    data = EvalData(
        [digits["train_folder"]], [digits["val_folder"]], Measurements(spectrum_samples=300, linear=False), "cpu"
    )
    out = measure_network(backbone, cfg, data, iteration=0, full=True, features=features)

    # the same numbers computed by hand from the backbone's outputs
    transform = build_eval_transform(16, mean=list(cfg.crops.mean), std=list(cfg.crops.std), patch_size=4)

    def encode(folder):
        items = list(build_eval_dataset([folder], transform))
        images = torch.stack([item[0] for item in items])
        labels = torch.tensor([int(item[1]) for item in items])
        with torch.no_grad():
            tokens = backbone.forward_features(images)
        feats = tokens["x_norm_clstoken"] if features == "cls" else tokens["x_norm_patchtokens"].mean(dim=1)
        return feats, labels

    train, train_labels = encode(digits["train_folder"])
    val, val_labels = encode(digits["val_folder"])
    expected = knn_classify(train, train_labels, val, val_labels, 10, ks=(20,), temperature=KNN_TEMPERATURE)
    assert out["knn"]["features"] == features
    assert out["knn"]["top1"] == pytest.approx(expected["top1"], abs=1e-6)
    assert out["spectrum"]["rankme"] == pytest.approx(rankme(train[:300]), rel=1e-4)
