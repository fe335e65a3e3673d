"""Online evaluation during training (dinolite.eval.online) on a tiny ViT and colour-coded images."""

from __future__ import annotations

import pytest
import torch

from dinolite.eval.knn import knn_classify
from dinolite.eval.online import LabelledImages, OnlineEvalOptions, OnlineEvaluator
from dinolite.models import DinoVisionTransformer


def _images(per_class: int, seed: int) -> LabelledImages:
    """Three classes: noise plus a strong red, green or blue cast (separable by any features)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3 * per_class, 3, 16, 16, generator=g) * 0.3
    labels = torch.arange(3).repeat_interleave(per_class)
    images[torch.arange(3 * per_class), labels] += 2.0
    return LabelledImages(images, labels)


def _backbone() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, init_values=1.0)


def test_knn_equals_the_protocol_on_the_backbones_cls_features_and_leaves_the_run_alone():
    train, val = _images(10, 0), _images(4, 1)
    evaluator = OnlineEvaluator(train, val, OnlineEvalOptions(every=5, k=5, linear=True, batch_size=7))
    backbone = _backbone().train()
    rng_before = torch.get_rng_state()
    results = evaluator.evaluate(backbone, torch.device("cpu"))
    assert backbone.training  # mode restored
    assert torch.equal(torch.get_rng_state(), rng_before)  # the probe does not move the training RNG
    with torch.no_grad():
        reference = knn_classify(
            backbone.eval()(train[0]), train[1], backbone(val[0]), val[1], 3, ks=(5,), headline_k=5
        )
    assert results["eval/knn_top1"] == pytest.approx(reference["top1"])
    assert results["eval/knn_top1"] > 90.0 and results["eval/linear_top1"] > 90.0
    assert set(results) == {"eval/knn_top1", "eval/linear_top1"}


def test_avgpool_reads_the_mean_of_the_final_norm_patch_tokens():
    """A method that trains no CLS token (I-JEPA: ``eval_features="avgpool"``) is scored on its patches."""
    train, val = _images(10, 0), _images(4, 1)
    backbone = _backbone().eval()
    with torch.no_grad():  # a CLS token far from the patches' mean: reading it would give another score
        backbone.cls_token.normal_(0.0, 3.0)
        by_hand = [backbone.forward_features(x)["x_norm_patchtokens"].mean(dim=1) for x in (train[0], val[0])]
        cls = [backbone(x) for x in (train[0], val[0])]
    reference = knn_classify(by_hand[0], train[1], by_hand[1], val[1], 3, ks=(5,), headline_k=5)
    results = OnlineEvaluator(train, val, OnlineEvalOptions(every=5, k=5, features="avgpool")).evaluate(
        backbone, torch.device("cpu")
    )
    assert results["eval/knn_top1"] == pytest.approx(reference["top1"])
    assert not torch.allclose(by_hand[0], cls[0])
    with pytest.raises(ValueError, match="features='patch'"):
        OnlineEvalOptions(every=5, features="patch")


def test_schedule_and_bad_values():
    train, val = _images(2, 0), _images(1, 1)
    evaluator = OnlineEvaluator(train, val, OnlineEvalOptions(every=100))
    assert [i for i in range(1, 301) if evaluator.due(i)] == [100, 200, 300]
    assert not any(OnlineEvaluator(train, val, OnlineEvalOptions(every=0)).due(i) for i in range(1, 301))
    with pytest.raises(ValueError, match="online_every must be >= 0"):
        OnlineEvalOptions(every=-1)
    for bad in ({"k": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            OnlineEvalOptions(every=1, **bad)
