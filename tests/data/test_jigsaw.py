"""PIRL's views (dinolite/data/jigsaw.py): tiles cut from the cells of the jigsaw crop at random offsets,
put in the drawn order, a stable per-image key, the collate, and refusals of sizes that do not tile."""

from __future__ import annotations

import pytest
import torch

from dinolite.data.augment import CropRecipe, augment_crop
from dinolite.data.jigsaw import JigsawViews, collate_jigsaw, cut_tiles, image_key


def plain(size: int) -> CropRecipe:
    """A recipe that only resizes (full crop, no flip, no colour change)."""
    return CropRecipe(
        size, (1.0, 1.0), blur_p=0.0, solarize_p=0.0, horizontal_flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0
    )


def test_each_tile_lies_inside_its_own_cell():
    """A crop whose pixels hold their (row, column): every tile of cell (r, c) covers rows and columns of
    that cell only, and the offsets vary."""
    side, grid, tile = 30, 3, 8
    rows = torch.arange(side).view(side, 1).expand(side, side)
    cols = torch.arange(side).view(1, side).expand(side, side)
    crop = torch.stack([rows, cols, torch.zeros_like(rows)]).float()
    offsets = set()
    for seed in range(5):
        tiles = cut_tiles(crop, grid, tile, torch.Generator().manual_seed(seed))
        assert tiles.shape == (9, 3, tile, tile)
        for i, t in enumerate(tiles):
            r, c = divmod(i, grid)
            assert 10 * r <= t[0].min() and t[0].max() < 10 * (r + 1)
            assert 10 * c <= t[1].min() and t[1].max() < 10 * (c + 1)
            assert torch.equal(t[0, :, 0], t[0, 0, 0] + torch.arange(tile).float())  # a contiguous square
            offsets.add((int(t[0, 0, 0]) - 10 * r, int(t[1, 0, 0]) - 10 * c))
    assert len(offsets) > 1 and all(0 <= dy <= 2 and 0 <= dx <= 2 for dy, dx in offsets)


def test_tiles_come_in_the_drawn_permutation():
    views = JigsawViews(plain(16), plain(30), grid=3, tile=8, mean=(0, 0, 0), std=(1, 1, 1))
    image = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    out = views(image, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    augment_crop(image, views.image_view, generator)
    crop = augment_crop(image, views.jigsaw_view, generator)
    ordered = cut_tiles(crop, 3, 8, generator)
    permutation = torch.randperm(9, generator=generator)
    assert torch.equal(out["permutation"], permutation)
    assert not torch.equal(permutation, torch.arange(9))
    torch.testing.assert_close(out["tiles"], ordered[permutation])
    assert out["image"].shape == (3, 16, 16)


def test_image_key_is_the_same_for_the_same_pixels_only():
    a = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0] ^= 1
    assert image_key(a) == image_key(a.clone()) and image_key(a) != image_key(b)
    assert 0 <= image_key(a) < 2**63
    views = JigsawViews(plain(16), plain(30), grid=3, tile=8)
    assert (
        views(a, torch.Generator().manual_seed(0))["image_id"] == views(a, torch.Generator().manual_seed(1))["image_id"]
    )


def test_collate_stacks_views_tiles_and_keys():
    views = JigsawViews(plain(16), plain(30), grid=3, tile=8)
    samples = [
        views(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8), torch.Generator().manual_seed(i)) for i in range(4)
    ]
    batch = collate_jigsaw(samples)
    assert batch["collated_images"].shape == (4, 3, 16, 16)
    assert batch["collated_tiles"].shape == (4, 9, 3, 8, 8)
    assert batch["permutations"].shape == (4, 9)
    assert batch["image_ids"].dtype == torch.int64 and batch["image_ids"].tolist() == [s["image_id"] for s in samples]
    with pytest.raises(ValueError, match="empty"):
        collate_jigsaw([])


def test_sizes_that_do_not_tile_are_refused():
    with pytest.raises(ValueError, match="3 x 3 cells"):
        JigsawViews(plain(16), plain(31), grid=3, tile=8)
    with pytest.raises(ValueError, match="tile's 12 px"):
        JigsawViews(plain(16), plain(30), grid=3, tile=12)
