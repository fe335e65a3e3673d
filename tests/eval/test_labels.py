"""ClassIndex: class tensors sized by the distinct labels present, in the labels' order, never by their value."""

from __future__ import annotations

import pytest
import torch

from dinolite.eval.labels import ClassIndex


def test_sparse_labels_map_to_dense_positions_in_increasing_order():
    index = ClassIndex(torch.tensor([99999999, 3, 3]), torch.tensor([0]))
    assert index.num_classes == 3 and not index.is_identity
    assert index.classes.tolist() == [0, 3, 99999999]
    assert index.positions(torch.tensor([3, 99999999, 0]), "train").tolist() == [1, 2, 0]
    assert index.describe() == "labels 0, 3, 99999999"


def test_labels_zero_to_c_minus_one_are_the_identity():
    index = ClassIndex(torch.tensor([2, 0, 1, 1]))
    assert index.is_identity and index.describe() == "labels 0..2"
    labels = torch.tensor([1, 2, 0])
    assert torch.equal(index.positions(labels, "val"), labels)


def test_a_label_outside_the_classes_is_named_with_its_source():
    index = ClassIndex(torch.tensor([0, 1, 7]))
    with pytest.raises(
        ValueError, match=r"val: label 5 is not among the 3 classes of the train set \(labels 0, 1, 7\)"
    ):
        index.positions(torch.tensor([1, 5]), "val", of="the train set")
    with pytest.raises(ValueError, match="label 2 but the data has no classes"):
        ClassIndex().positions(torch.tensor([2]), "val")


def test_many_classes_are_described_by_the_first_few():
    index = ClassIndex(torch.tensor([1, 10, 20, 30, 40, 50, 60]))
    assert index.describe(shown=3) == "labels 1, 10, 20, ..."
    assert ClassIndex().describe() == "no labels" and ClassIndex().positions(torch.zeros(0), "x").numel() == 0
