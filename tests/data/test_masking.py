import math

import pytest
import torch

from dinolite.data.masking import MaskingGenerator


def test_mask_counts_follow_the_request():
    gen = MaskingGenerator((14, 14))
    generator = torch.Generator().manual_seed(0)
    assert gen(0, generator).sum() == 0
    for ratio in (0.1, 0.3, 0.5):
        target = int(196 * ratio)
        counts = [int(gen(target, generator).sum()) for _ in range(50)]
        assert max(counts) <= target  # never more than asked
        assert sum(counts) / len(counts) >= 0.9 * target  # and close to it on average
    mask = gen(40, generator)
    assert mask.dtype == torch.bool and mask.shape == (14, 14)


def test_single_blocks_are_rectangles_within_bounds():
    gen = MaskingGenerator((14, 14))
    generator = torch.Generator().manual_seed(1)
    aspects = []
    for _ in range(300):
        mask = torch.zeros(14, 14, dtype=torch.bool)
        added = gen._add_block(mask, gen.max_num_patches, generator)
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert added == int(mask.sum()) == h * w  # one filled rectangle
        assert 3 <= h * w <= gen.max_num_patches == 98  # at least ~min_num_patches (4 before rounding)
        aspects.append(math.log(h / w))
    # log-uniform aspect in [0.3, 3.33]; rounding h and w to integers widens it to at most 1:5 here
    assert max(aspects) <= math.log(5) + 1e-9 and min(aspects) >= -math.log(5) - 1e-9
    assert abs(sum(aspects) / len(aspects)) < 0.15


def test_deterministic_given_a_generator_and_validates():
    gen = MaskingGenerator((8, 8))
    a = gen(20, torch.Generator().manual_seed(3))
    b = gen(20, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        MaskingGenerator((8, 8), max_num_patches=2)


def test_beits_released_rule_keeps_filling_below_the_smallest_block():
    """BEiT's masking_generator.py (75 of 196 patches, blocks >= 16): when less than 16 patches are left it
    still draws blocks of U(left, 16) patches, accepted when they add at most what is left; dinolite's
    default stops there. Over the same draws the release's rule reaches the count exactly more often."""
    released = MaskingGenerator((14, 14), max_num_patches=75, min_num_patches=16, stop_below_min_block=False)
    stopping = MaskingGenerator((14, 14), max_num_patches=75, min_num_patches=16)
    exact = {"released": 0, "stopping": 0}
    for seed in range(60):
        for name, gen in (("released", released), ("stopping", stopping)):
            count = int(gen(75, torch.Generator().manual_seed(seed)).sum())
            assert count <= 75
            exact[name] += count == 75
    assert exact["released"] > exact["stopping"] + 10
