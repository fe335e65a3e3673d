"""LARS (dinolite.train.lars): the update of You et al. (2017) as Barlow Twins and DirectCLR release it, on hand
values."""

from __future__ import annotations

import pytest
import torch

from dinolite.train.lars import LARS, trust_ratio


def _param(values: list[float], grad: list[float]) -> torch.nn.Parameter:
    param = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    param.grad = torch.tensor(grad, dtype=torch.float64)
    return param


def test_one_step_by_hand() -> None:
    """w = (3, 4), g = (0.6, 0.8), wd 0.5: d = g + wd w = (2.1, 2.8), ||d|| = 3.5, ||w|| = 5, q = eta 5 / 3.5;
    the first step's momentum buffer is d q, and w <- w - lr d q."""
    weight = _param([3.0, 4.0], [0.6, 0.8])
    optimizer = LARS([weight], lr=2.0, weight_decay=0.5, momentum=0.9, eta=0.01)
    optimizer.step()
    q = 0.01 * 5.0 / 3.5
    expected = torch.tensor([3.0 - 2.0 * 2.1 * q, 4.0 - 2.0 * 2.8 * q], dtype=torch.float64)
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-15)


def test_second_step_carries_momentum() -> None:
    """mu_2 = m mu_1 + d_2 q_2 with each step's own trust ratio."""
    weight = _param([3.0, 4.0], [0.6, 0.8])
    optimizer = LARS([weight], lr=1.0, weight_decay=0.0, momentum=0.5, eta=0.1)
    optimizer.step()  # ||g|| = 1, ||w|| = 5: q = 0.5, mu = (0.3, 0.4), w = (2.7, 3.6)
    weight.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)
    optimizer.step()  # ||w|| = 4.5, ||g|| = 2: q = 0.225, mu = 0.5 (0.3, 0.4) + (0, 0.45) = (0.15, 0.65)
    torch.testing.assert_close(weight.detach(), torch.tensor([2.55, 2.95], dtype=torch.float64), rtol=0, atol=1e-15)


def test_an_excluded_group_is_plain_sgd_with_momentum() -> None:
    """``lars_adaptation: False`` (1-D parameters in the releases): w <- w - lr (g + wd w), no trust ratio."""
    bias = _param([1.0, -2.0], [0.5, 0.25])
    optimizer = LARS([{"params": [bias], "lars_adaptation": False}], lr=0.1, weight_decay=0.0, eta=0.001)
    optimizer.step()
    torch.testing.assert_close(bias.detach(), torch.tensor([0.95, -2.025], dtype=torch.float64), rtol=0, atol=1e-15)


def test_the_trust_ratio_is_one_where_a_norm_is_zero() -> None:
    zeros, ones = torch.zeros(3), torch.ones(3)
    assert float(trust_ratio(zeros, ones, 0.001)) == 1.0  # a zero-initialised parameter moves by lr g
    assert float(trust_ratio(ones, zeros, 0.001)) == 1.0
    assert float(trust_ratio(ones * 2, ones, 0.001)) == pytest.approx(0.002)
    weight = _param([0.0, 0.0], [1.0, -1.0])
    LARS([weight], lr=0.5, eta=0.001).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([-0.5, 0.5], dtype=torch.float64))


def test_parameters_without_a_gradient_are_left_alone_and_bad_values_named() -> None:
    weight = torch.nn.Parameter(torch.ones(2))
    LARS([weight], lr=1.0).step()
    assert torch.equal(weight.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="momentum=1.0"):
        LARS([weight], lr=1.0, momentum=1.0)
    with pytest.raises(ValueError, match="eta=0"):
        LARS([weight], lr=1.0, eta=0)


def _lars_step_on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    """One LARS step on a fully sharded student (every rank the same batch, so the averaged gradient is the
    one-process gradient); returns the full parameters after the step."""
    from torch.distributed.fsdp import fully_shard

    from dinolite.train.optim import GroupRules, apply_schedules, get_param_groups

    student = _lars_student()
    if world > 1:
        for block in student["backbone"].blocks:
            fully_shard(block)
        fully_shard(student["backbone"])
        fully_shard(student["head"])
    rules = GroupRules(decay_rule="non_1d", lr_1d_mult=0.024, lars_exclude_1d=True)
    groups = get_param_groups(student, rules=rules)
    optimizer = LARS([{k: v for k, v in g.items() if k != "names"} for g in groups], eta=0.001)
    apply_schedules(optimizer, lr=1.6, weight_decay=1e-6)
    torch.manual_seed(1)
    student["head"](student["backbone"](torch.randn(4, 3, 16, 16))).square().sum().backward()
    optimizer.step()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in student.named_parameters()}


def _lars_student() -> torch.nn.ModuleDict:
    from dinolite.models import DinoVisionTransformer

    torch.manual_seed(0)
    backbone = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, init_values=0.1)
    return torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(16, 8)})


@pytest.mark.slow
def test_lars_on_fsdp2_shards_equals_one_process(tmp_path) -> None:
    """The trust ratio's norms are those of the whole parameters, not of a rank's shard: two fully sharded gloo
    ranks step every parameter as one process does."""
    from tests.gloo_ranks import run_on_ranks

    one, two = (run_on_ranks(_lars_step_on_rank, world, tmp_path / f"world{world}")[0] for world in (1, 2))
    assert sorted(one) == sorted(two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
