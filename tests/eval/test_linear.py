import pytest
import torch

from dinolite.eval.linear import (
    HeadSpec,
    LinearHeadGrid,
    ProbeResult,
    build_optimizer,
    head_grid,
    head_input,
    heldout_mask,
    linear_probe_cached,
    standardize,
)

D, N_BLOCKS = 4, 4


def _separable_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layout [cls x4, avgpool]: only the avgpool slice carries the (linearly separable) label."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    features = torch.randn(n, (N_BLOCKS + 1) * D, generator=gen)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    features[:, N_BLOCKS * D :] = centres[labels] + 0.3 * torch.randn(n, D, generator=gen)
    return features, labels


def test_head_input_slices_last_blocks_and_avgpool():
    features = torch.arange(20.0).reshape(1, 20)  # cls blocks [0:4] [4:8] [8:12] [12:16], avgpool [16:20]
    last1 = head_input(features, HeadSpec(0.1, 1, False), D, N_BLOCKS)
    assert last1.tolist() == [[12.0, 13.0, 14.0, 15.0]]
    last4_pool = head_input(features, HeadSpec(0.1, 4, True), D, N_BLOCKS)
    assert last4_pool.tolist() == [list(range(20))]
    with pytest.raises(ValueError, match="n_blocks=5"):
        head_input(features, HeadSpec(0.1, 5, False), D, N_BLOCKS)


def test_optimizer_scales_lr_by_batch_and_decays_to_zero():
    grid = LinearHeadGrid(head_grid([0.1, 0.01], [1], [False]), D, N_BLOCKS, 3)
    optimizer, scheduler = build_optimizer(grid, global_batch_size=512, total_iterations=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.02])
    assert optimizer.param_groups[0]["momentum"] == 0.9
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # half-way down the cosine
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_heldout_mask_is_deterministic_and_near_fraction():
    idx = torch.arange(20_000)
    mask = heldout_mask(idx, 0.1, seed=0)
    assert torch.equal(mask, heldout_mask(idx, 0.1, seed=0))
    assert 0.08 < mask.float().mean() < 0.12
    assert not heldout_mask(idx, 0.0, seed=0).any()


def test_probe_learns_separable_task_and_picks_best_head():
    train_x, train_y = _separable_features(600, seed=0)
    val_x, val_y = _separable_features(200, seed=1)
    specs = head_grid([1e-6, 0.05], [1, 4], [False, True])
    result = linear_probe_cached(
        train_x,
        train_y,
        torch.arange(600),
        val_x,
        val_y,
        embed_dim=D,
        n_available=N_BLOCKS,
        num_classes=3,
        specs=specs,
        epochs=5,
        batch_size=64,
    )
    best = result.specs[result.best]
    # Only heads that see the avgpool slice can beat chance; a 1e-6 lr cannot move the weights.
    assert best.avgpool and best.lr == 0.05
    assert result.selection_top1[result.best] == max(result.selection_top1)
    assert result.val_top1[result.best] > 97.0
    for spec, acc in zip(result.specs, result.val_top1):
        if not spec.avgpool:
            assert acc < 55.0, (spec, acc)
    js = result.to_json("heldout")
    assert js["best"] == {"lr": 0.05, "n_blocks": best.n_blocks, "avgpool": True}
    assert len(js["grid"]) == 8 and js["top1"] == result.val_top1[result.best]


def test_standardize_uses_the_fitting_rows_statistics_only():
    fit = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    other = torch.tensor([[2.0, 20.0], [5.0, 0.0]])
    fit_z, other_z = standardize(fit, other)
    std = torch.tensor([2.0**0.5, 200.0**0.5])  # unbiased std of each column of fit
    torch.testing.assert_close(fit_z, (fit - torch.tensor([2.0, 20.0])) / std)
    torch.testing.assert_close(other_z, (other - torch.tensor([2.0, 20.0])) / std)
    constant = torch.ones(3, 2)
    assert torch.equal(standardize(constant)[0], torch.zeros(3, 2))  # no division by zero


def test_standardizing_rescues_features_riding_on_a_large_shared_offset():
    """MAE's probe protocol: the label lives in a variation ~1e-3 of a shared offset. A plain SGD head
    barely moves along it in a few epochs; the same head on z-scored features separates the classes."""

    def offset_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _separable_features(n, seed)
        return 1000.0 + 0.01 * x, y

    (train_x, train_y), (val_x, val_y) = offset_features(600, 0), offset_features(200, 1)
    kwargs = dict(embed_dim=D, n_available=N_BLOCKS, num_classes=3, specs=head_grid([0.05], [1], [True]), epochs=5)
    plain = linear_probe_cached(train_x, train_y, torch.arange(600), val_x, val_y, **kwargs)
    zscored = linear_probe_cached(
        train_x, train_y, torch.arange(600), val_x, val_y, standardize_features=True, **kwargs
    )
    assert plain.val_top1[plain.best] < 60.0
    assert zscored.val_top1[zscored.best] > 95.0


def test_selecting_on_val_uses_every_training_sample():
    train_x, train_y = _separable_features(100, seed=0)
    result = linear_probe_cached(
        train_x,
        train_y,
        torch.arange(100),
        train_x[:10],
        train_y[:10],
        embed_dim=D,
        n_available=N_BLOCKS,
        num_classes=3,
        specs=head_grid([0.05], [4], [True]),
        epochs=1,
        batch_size=10,
        select_on="val",
    )
    assert len(result.losses) == 10  # 100 samples / batch 10, no held-out removed
    assert result.selection_top1 == result.val_top1


def test_too_small_heldout_is_a_clear_error():
    x, y = _separable_features(5, seed=0)
    with pytest.raises(ValueError, match="held-out samples"):
        linear_probe_cached(
            x,
            y,
            torch.arange(5),
            x,
            y,
            embed_dim=D,
            n_available=N_BLOCKS,
            num_classes=3,
            specs=head_grid([0.1], [1], [False]),
            heldout_fraction=0.0,
        )


def _result(lrs, best_lr, selection=None):
    specs = head_grid(lrs, [1], [False])
    scores = selection or [float(i) for i in range(len(specs))]
    return ProbeResult(specs, scores, scores, [s.lr for s in specs].index(best_lr), [0.1])


def test_edge_warning_when_best_lr_is_the_largest_or_smallest_of_the_grid():
    largest = _result([1e-3, 1e-2, 0.1], 0.1)
    assert "largest of the grid (0.001..0.1)" in largest.edge_warning()
    assert "larger rates" in largest.edge_warning()
    js = largest.to_json("heldout")
    assert js["best_lr_on_grid_edge"] and js["warnings"] == [largest.edge_warning()]
    assert "smallest" in _result([1e-3, 1e-2, 0.1], 1e-3).edge_warning()
    inner = _result([1e-3, 1e-2, 0.1], 1e-2)
    assert inner.edge_warning() is None and inner.to_json("val")["warnings"] == []
    assert _result([0.05], 0.05).edge_warning() is None  # a one-lr grid has no edge to warn about


def test_summary_rows_are_the_best_heads_first():
    result = _result([1e-3, 1e-2, 0.1, 0.2], 1e-2, selection=[50.0, 90.0, 70.0, 90.0])
    assert result.summary_rows(3) == [1, 3, 2]
