"""Statistics and invariants of the I-JEPA (the paper's and the released collator's), SimMIM and MSN masks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dinolite.data.masked_views import (
    MultiBlockMaskGenerator,
    SimMIMMaskGenerator,
    kept_patch_count,
    mae_noise,
    mae_shuffle,
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


# ------------------------------------------------------------------------------------------------
# sampler="released": the released I-JEPA collator's masks
# ------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "released"


def _released(grid: int, **kwargs) -> MultiBlockMaskGenerator:
    settings = dict(target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_keep=10)
    return MultiBlockMaskGenerator(grid, 4, **{**settings, **kwargs}, sampler="released")


def test_released_sampler_draws_the_released_collators_masks():
    """Given the release's two generator states (its step-seeded generator for the sizes, torch's global one for
    the corners), the masks equal those the released MaskCollator drew (figures recorded from the release: the
    8x8 golden step's inputs, and three 16-image batches on the ImageNet config's 14x14 grid)."""
    step = load_file(FIXTURES / "ijepa.safetensors")
    context, targets = _released(8).released_masks(8, _gen(0), _gen(2))  # step 0, global seed 2
    assert torch.equal(context, step["inputs/context_idx"]) and torch.equal(targets, step["inputs/target_idx"])
    with safe_open(str(FIXTURES / "ijepa_masks.safetensors"), "pt") as handle:
        settings = json.loads(handle.metadata()["settings"])
        recorded = {key: handle.get_tensor(key) for key in handle.keys()}
    assert settings["crop_size"] // settings["patch_size"] == 14 and settings["mask"]["npred"] == 4
    for i, batch in enumerate(settings["batches"]):
        context, targets = _released(14).released_masks(
            settings["batch_size"], _gen(batch["collator_step"]), _gen(batch["global_seed"])
        )
        assert torch.equal(context, recorded[f"step{i}/context_idx"]), i
        assert torch.equal(targets, recorded[f"step{i}/target_idx"]), i


def test_released_block_size_uses_one_number_for_scale_and_aspect():
    """Hand values. The first uniform of seed 0 is u = 0.49626: target scale 0.15 + 0.05 u = 0.17481, area
    int(196 * 0.17481) = 34, aspect 0.75 + 0.75 u = 1.12220, so h = round(sqrt(38.15)) = 6, w = round(sqrt(30.30)) =
    6. The context (aspect 1): area int(196 * (0.85 + 0.15 u)) = 181, side round(13.45) = 13 = H - 1; at u near
    1 the area is 196 and the side 14, cut to 13."""
    assert float(torch.rand(1, generator=_gen(0))) == pytest.approx(0.49626, abs=1e-5)
    gen = _released(14)
    assert gen.released_block_size((0.15, 0.2), (0.75, 1.5), _gen(0)) == (6, 6)
    assert gen.released_block_size((0.85, 1.0), (1.0, 1.0), _gen(0)) == (13, 13)
    assert gen.released_block_size((1.0, 1.0), (1.0, 1.0), _gen(0)) == (13, 13)

    # one number: scale and aspect both grow with u, so the height never falls as u grows (the paper draws the
    # aspect independently: its heights do not follow its first number)
    def heights_by_first_uniform(block_size) -> list[int]:
        seeds = sorted(range(200), key=lambda seed: float(torch.rand(1, generator=_gen(seed))))
        return [block_size((0.15, 0.2), (0.75, 1.5), _gen(seed))[0] for seed in seeds]

    released = heights_by_first_uniform(gen.released_block_size)
    assert released == sorted(released) and released[0] < released[-1]
    paper = heights_by_first_uniform(MultiBlockMaskGenerator(14).block_size)
    assert paper != sorted(paper)


@pytest.mark.parametrize("grid", [8, 14])
def test_released_blocks_never_touch_the_last_row_or_column_and_the_context_is_the_top_left_square(grid):
    gen = _released(grid, min_keep=4)
    last = grid - 1
    seen_relaxed = False
    for seed in range(10):
        context, targets = gen(16, _gen(seed))
        for indices in (context, targets):
            assert int((indices // grid).max()) < last and int((indices % grid).max()) < last
        # the context block is the (H-1) x (W-1) square at the origin: all of it but the targets (and the
        # batch's truncation to the first raster indices, which removes the last ones)
        for b in range(16):
            outside_targets = sorted(set(range(grid * grid)) - set(targets[b].flatten().tolist()))
            square = [i for i in outside_targets if i // grid < last and i % grid < last]
            if set(context[b].tolist()) & set(targets[b].flatten().tolist()):
                seen_relaxed = True
                continue
            assert context[b].tolist() == square[: context.shape[1]]
    paper_rows = torch.cat([MultiBlockMaskGenerator(grid, min_keep=4)(16, _gen(s))[1].flatten() for s in range(10)])
    assert int((paper_rows // grid).max()) == last  # the paper's blocks reach the last row
    assert not seen_relaxed or grid == 8


def test_released_sampler_relaxes_like_the_release_and_stops_where_it_would_loop():
    """More than min_keep patches per block (strict); a context that cannot keep them outside the targets is
    allowed to overlap one more target after every 20 failed draws (the paper sampler refuses instead); a block
    too small for min_keep even unconstrained is an error (the release would loop forever)."""
    crowded = MultiBlockMaskGenerator(
        4, 4, (0.35, 0.35), (1.0, 1.0), (1.0, 1.0), min_keep=3, attempts=50, sampler="released"
    )  # 2x2 targets (area int(5.6) = 5), the context the 3x3 square
    overlaps = 0
    for seed in range(20):
        context, targets = crowded(4, _gen(seed))
        for b in range(4):
            overlaps += bool(set(context[b].tolist()) & set(targets[b].flatten().tolist()))
    assert overlaps > 0
    with pytest.raises(ValueError, match="never holds more than min_keep=4"):
        MultiBlockMaskGenerator(8, 4, (0.07, 0.07), min_keep=4, sampler="released")(2, _gen(0))  # 2x2 = 4
    with pytest.raises(ValueError, match="sampler='release' is not one of paper, released"):
        MultiBlockMaskGenerator(8, sampler="release")


def test_mae_shuffle_keeps_the_patches_of_smallest_noise_in_ascending_order_and_restores_the_order():
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    ids_keep, ids_restore = mae_shuffle(noise, 0.5)
    assert ids_keep.tolist() == [[1, 3], [0, 2]]
    # each patch's place in the shuffled order: the masked patches (place >= 2) are the largest noise
    assert ids_restore.tolist() == [[2, 0, 3, 1], [0, 3, 1, 2]]
    assert (ids_restore >= 2).tolist() == [[True, False, True, False], [False, True, False, True]]


def test_mae_shuffle_keeps_int_of_n_times_the_visible_fraction_as_the_release():
    noise = torch.rand(3, 49, generator=_gen(0))
    assert mae_shuffle(noise, 0.75)[0].shape == (3, 12)  # int(49 * 0.25) = 12
    assert mae_shuffle(noise, 0.999)[0].shape == (3, 1)  # at least one visible patch
    with pytest.raises(ValueError, match="mask_ratio"):
        mae_shuffle(noise, 1.0)


def test_mae_noise_is_one_row_per_image_from_its_own_generator():
    a = mae_noise(4, 16, _gen(3))
    assert a.shape == (4, 16) and torch.equal(a, mae_noise(4, 16, _gen(3)))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(mae_noise(2, 16, _gen(3)), a[:2])  # a row does not depend on the batch size
