"""The feature cache: keys change with anything that determines the features; entries read back exactly."""

from __future__ import annotations

import torch

from dinolite.eval.cache import FeatureCache, cache_key
from dinolite.eval.features import ExtractedFeatures

PARTS = {"backbone": "sha256:ab12", "source": "digits:train", "transform": "resize 32", "kind": "cls"}


def test_the_key_ignores_argument_order_and_changes_with_any_part():
    key = cache_key(**PARTS)
    assert cache_key(**dict(reversed(list(PARTS.items())))) == key
    for part in PARTS:
        assert cache_key(**{**PARTS, part: PARTS[part] + "x"}) != key, part


def test_saved_features_load_back_bitwise_and_a_missing_entry_is_none(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    key = cache_key(**PARTS)
    assert cache.load("train", key) is None
    saved = ExtractedFeatures(torch.randn(5, 4), torch.tensor([3, 1, 4, 1, 5]), torch.arange(5))
    path = cache.save("train", key, saved)
    assert path == tmp_path / "cache" / f"train-{key}.safetensors"
    loaded = cache.load("train", key)
    assert loaded is not None
    assert torch.equal(loaded.features, saved.features)
    assert torch.equal(loaded.labels, saved.labels) and torch.equal(loaded.indices, saved.indices)
    assert cache.load("val", key) is None  # the name is part of the entry
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temp file left behind
