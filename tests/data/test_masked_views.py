"""Statistics and invariants of the I-JEPA, SimMIM and MSN masks."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.data.masked_views import (
    MultiBlockMaskGenerator,
    SimMIMMaskGenerator,
    kept_patch_count,
    per_sample_generators,
    random_keep_indices,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ijepa_masks_invariants_on_the_paper_grid():
    gen = MultiBlockMaskGenerator(14)  # ViT-*/16 at 224 px
    for seed in range(20):
        context, targets = gen(8, _gen(seed))
        assert context.dtype == torch.long and targets.dtype == torch.long
        assert context.ndim == 2 and context.shape[0] == 8
        assert targets.shape[:2] == (8, 4)
        assert context.shape[1] >= gen.min_keep
        for b in range(8):
            c = context[b]
            assert torch.equal(c, c.sort().values) and c.unique().numel() == c.numel()  # sorted, distinct
            assert 0 <= int(c.min()) and int(c.max()) < 196
            target_set = set(targets[b].flatten().tolist())
            assert not target_set & set(c.tolist())  # the context never sees a target patch
            for t in targets[b]:
                # each target is one filled h x w rectangle of the grid
                rows, cols = t // 14, t % 14
                h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
                assert h * w == t.numel()


def test_ijepa_block_scale_and_aspect_statistics():
    gen = MultiBlockMaskGenerator(14)
    g = _gen(0)
    target_areas, aspects, context_areas = [], [], []
    for _ in range(2000):
        h, w = gen.block_size(gen.target_scale, gen.target_aspect, g)
        target_areas.append(h * w / 196)
        aspects.append(h / w)
        ch, cw = gen.block_size(gen.context_scale, gen.context_aspect, g)
        context_areas.append(ch * cw / 196)
    mean_area = sum(target_areas) / len(target_areas)
    # scale ~ U(0.15, 0.2): mean 0.175 (integer rounding of h, w adds a little spread)
    assert 0.16 < mean_area < 0.19
    assert min(target_areas) > 0.10 and max(target_areas) < 0.26
    assert 0.6 < min(aspects) and max(aspects) < 1.9
    assert sum(a > 1 for a in aspects) > 0.5 * len(aspects)  # aspect U(0.75, 1.5): mostly taller than wide
    assert 0.8 < min(context_areas) and max(context_areas) <= 1.0


def test_ijepa_masks_equalise_context_counts_and_are_reproducible():
    gen = MultiBlockMaskGenerator(14)
    a_ctx, a_tgt = gen(16, _gen(3))
    b_ctx, b_tgt = gen(16, _gen(3))
    assert torch.equal(a_ctx, b_ctx) and torch.equal(a_tgt, b_tgt)
    c_ctx, _ = gen(16, _gen(4))
    assert not torch.equal(a_ctx, c_ctx) if a_ctx.shape == c_ctx.shape else True
    # the context keeps what the targets leave (typically 40-60% of the grid at these scales)
    fractions = [gen(4, _gen(s))[0].shape[1] / 196 for s in range(30)]
    assert 0.25 < sum(fractions) / len(fractions) < 0.75


def test_ijepa_sample_masks_do_not_depend_on_batch_size_beyond_their_position():
    # per-sample generators: sample 0's raw draw is the same whatever the batch size
    g1, g2 = per_sample_generators(_gen(7), 2), per_sample_generators(_gen(7), 5)
    assert torch.equal(torch.rand(3, generator=g1[0]), torch.rand(3, generator=g2[0]))
    assert torch.equal(torch.rand(3, generator=g1[1]), torch.rand(3, generator=g2[1]))


def test_ijepa_rejects_impossible_settings():
    with pytest.raises(ValueError, match="target_scale"):
        MultiBlockMaskGenerator(14, target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMaskGenerator(4, min_keep=16)
    tight = MultiBlockMaskGenerator(4, num_targets=4, target_scale=(0.9, 1.0), min_keep=3, attempts=3)
    with pytest.raises(ValueError, match="no placement"):
        tight(2, _gen(0))


def test_simmim_mask_exact_ratio_in_units_of_the_mask_patch():
    gen = SimMIMMaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=16, mask_ratio=0.6)
    assert gen.grid == 12 and gen.mask_count == math.ceil(36 * 0.6) == 22
    masks = gen.batch(64, _gen(0))
    assert masks.shape == (64, 144) and masks.dtype == torch.bool
    assert torch.all(masks.sum(1) == 22 * 4)  # every 32 px unit covers 2x2 ViT patches
    grid = masks.reshape(64, 12, 12).float()
    # constant within each 2x2 unit
    units = grid.reshape(64, 6, 2, 6, 2)
    assert torch.all(units.amin(dim=(2, 4)) == units.amax(dim=(2, 4)))
    # every unit is masked with probability 22/36 (uniform positions)
    freq = units[:, :, 0, :, 0].mean(0)
    assert abs(float(freq.mean()) - 22 / 36) < 1e-6
    assert float(freq.min()) > 0.35 and float(freq.max()) < 0.85
    assert torch.equal(masks, gen.batch(64, _gen(0)))


def test_simmim_mask_patch_must_be_a_multiple_of_the_vit_patch():
    with pytest.raises(ValueError, match="multiple of the ViT patch_size"):
        SimMIMMaskGenerator(192, mask_patch_size=24, model_patch_size=16)
    with pytest.raises(ValueError, match="input_size"):
        SimMIMMaskGenerator(200, mask_patch_size=32, model_patch_size=16)


def test_msn_keep_indices():
    keep = random_keep_indices(256, 196, 0.3, _gen(0))
    assert keep.shape == (256, round(0.7 * 196))
    assert torch.all(keep[:, 1:] > keep[:, :-1])  # sorted, no repeats
    counts = torch.bincount(keep.flatten(), minlength=196).float() / 256
    assert abs(float(counts.mean()) - 137 / 196) < 1e-6 and float(counts.min()) > 0.5 and float(counts.max()) < 0.9
    assert torch.equal(keep, random_keep_indices(256, 196, 0.3, _gen(0)))
    assert random_keep_indices(2, 16, 0.0, _gen(0)).tolist() == [list(range(16))] * 2
    with pytest.raises(ValueError, match="mask_ratio"):
        random_keep_indices(2, 16, 1.0)


def test_msn_kept_patch_count_round_or_floor():
    # ViT-S/16 at 224 px, patch_drop 0.15: 196 x 0.85 = 166.6 -> round 167 (dinolite), floor 166 (the release)
    assert kept_patch_count(196, 0.15) == 167 and kept_patch_count(196, 0.15, "floor") == 166
    assert kept_patch_count(196, 0.3, "floor") == 137 and kept_patch_count(64, 0.25, "floor") == 48
    assert kept_patch_count(4, 0.9, "floor") == 1  # at least one patch
    assert random_keep_indices(3, 196, 0.15, _gen(0), rounding="floor").shape == (3, 166)
    with pytest.raises(ValueError, match="rounding"):
        kept_patch_count(196, 0.15, "ceil")


def test_msn_keep_indices_per_batch_share_one_subset():
    per_batch = random_keep_indices(6, 64, 0.25, _gen(3), per="batch")
    assert per_batch.shape == (6, 48) and all(torch.equal(row, per_batch[0]) for row in per_batch)
    assert torch.all(per_batch[0, 1:] > per_batch[0, :-1])
    per_image = random_keep_indices(6, 64, 0.25, _gen(3))
    assert len({tuple(row.tolist()) for row in per_image}) == 6  # one subset each
    assert torch.equal(per_batch, random_keep_indices(6, 64, 0.25, _gen(3), per="batch"))
    with pytest.raises(ValueError, match="per must be"):
        random_keep_indices(2, 16, 0.25, per="view")
