import math

import pytest
import torch

from dinolite.eval.knn import knn_classify, knn_votes


def _unit(angle_cos: float, sign: float = 1.0) -> list[float]:
    return [angle_cos, sign * math.sqrt(1.0 - angle_cos**2)]


def test_votes_are_exp_similarity_over_temperature():
    sims = torch.tensor([[1.0, 0.5, 0.0]])
    labels = torch.tensor([[0, 1, 1]])
    scores = knn_votes(sims, labels, num_classes=3, temperature=0.1)
    expected = torch.tensor([[math.exp(10.0), math.exp(5.0) + 1.0, 0.0]])
    torch.testing.assert_close(scores, expected)


def test_known_neighbours_give_hand_computed_predictions():
    # Query (1,0). Its nearest neighbour (sim 1.0) is class 0; the next two (sim 0.94) are class 1; the
    # last one is opposite. With k=3 and T=0.07: class 0 scores e^(1/0.07)=e^14.29, class 1 scores
    # 2*e^(0.94/0.07)=e^14.12 -> class 0 wins. With T=1 (almost plain majority): e^1=2.72 < 2e^0.94=5.12
    # -> class 1 wins. With k=1 class 0 always wins.
    train = torch.tensor([[1.0, 0.0], _unit(0.94), _unit(0.94, -1.0), [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[2.0, 0.0]])  # not unit length: knn must normalise
    sharp = knn_classify(train, train_labels, test, torch.tensor([0]), num_classes=2, ks=(1, 3), temperature=0.07)
    assert sharp["per_k"]["1"]["top1"] == 100.0
    assert sharp["per_k"]["3"]["top1"] == 100.0
    flat = knn_classify(train, train_labels, test, torch.tensor([0]), num_classes=2, ks=(1, 3), temperature=1.0)
    assert flat["per_k"]["1"]["top1"] == 100.0
    assert flat["per_k"]["3"]["top1"] == 0.0
    assert "best_k" not in flat


def test_headline_is_k20_even_when_another_k_scores_higher():
    # Query (1,0): one class-0 neighbour at sim 1, then 19 class-1 neighbours at sim 0.94 and 5 more
    # class-0 ones opposite. k=1 is right (class 0); at k=20 with T=1 class 1's 19*e^0.94 beats e^1.
    # The headline must be k=20's 0%, not the best k's 100% (no k selected on the test set).
    train = torch.tensor([[1.0, 0.0]] + [_unit(0.94)] * 19 + [[-1.0, 0.0]] * 5)
    labels = torch.tensor([0] + [1] * 19 + [0] * 5)
    result = knn_classify(train, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 2, ks=(1,), temperature=1.0)
    assert set(result["per_k"]) == {"1", "20"}  # the headline k is always evaluated
    assert result["per_k"]["1"]["top1"] == 100.0
    assert result["k"] == 20 and result["top1"] == 0.0 and result["top1"] == result["per_k"]["20"]["top1"]


def test_top5_counts_label_among_five_best_classes():
    # Six classes, one training sample each, similarity decreasing with the class id; the query's
    # label is class 4 (5th best) -> top-1 miss, top-5 hit; label 5 (6th) -> both miss.
    angles = torch.linspace(0.0, 1.2, 6)
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.arange(6)
    test = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    result = knn_classify(train, labels, test, torch.tensor([4, 5]), num_classes=6, ks=(10,))
    assert result["per_k"]["10"] == {"top1": 0.0, "top5": 50.0}


def test_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(500, 16, generator=gen)
    train_labels = torch.randint(0, 7, (500,), generator=gen)
    test = torch.randn(97, 16, generator=gen)
    test_labels = torch.randint(0, 7, (97,), generator=gen)
    whole = knn_classify(train, train_labels, test, test_labels, 7, chunk_size=10_000, train_chunk_size=10_000)
    chunked = knn_classify(train, train_labels, test, test_labels, 7, chunk_size=7, train_chunk_size=33)
    assert whole == chunked
    assert set(whole["per_k"]) == {"10", "20", "100", "200"}


def test_rejects_labels_outside_class_count():
    with pytest.raises(ValueError, match="label 3 is outside"):
        knn_classify(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), torch.randn(1, 2), torch.tensor([0]), 3)


def test_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension 2 but test features 3"):
        knn_classify(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(1, 3), torch.tensor([0]), 2)
