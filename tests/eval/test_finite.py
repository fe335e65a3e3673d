"""Non-finite weights or features stop an evaluation with a message naming the tensors or rows at fault."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dinolite.eval.finite import NonFiniteError, check_finite_module, check_finite_rows, non_finite_tensors


def test_finite_weights_and_rows_pass():
    check_finite_module(nn.Linear(3, 2), "backbone")
    check_finite_rows(torch.randn(4, 3), "train features")


def test_each_non_finite_parameter_and_buffer_is_named_with_its_counts():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[0].weight[1, 1] = float("inf")
        model[1].running_var[0] = float("nan")
    model[1].num_batches_tracked.fill_(3)  # an integer buffer: never a problem
    assert non_finite_tensors(model) == ["0.weight (1 NaN, 1 inf)", "1.running_var (1 NaN)"]
    with pytest.raises(NonFiniteError, match=r"^teacher: 2 weight tensor\(s\) hold non-finite values: 0.weight"):
        check_finite_module(model, "teacher")


def test_many_bad_tensors_are_counted_beyond_the_first_five():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="8 weight tensor.* and 3 more;") as caught:
        check_finite_module(model, "head")
    assert "2.weight (1 NaN)" in str(caught.value) and "2.bias" not in str(caught.value)  # the first five only


def test_the_first_bad_row_and_the_count_are_named():
    features = torch.zeros(5, 3)
    features[2, 1] = float("inf")
    features[4] = float("nan")
    with pytest.raises(
        NonFiniteError, match=r"val: 2 of 5 images hold non-finite values \(3 NaN, 1 inf; first: image 2\)"
    ):
        check_finite_rows(features, "val", unit="images")
