"""Views and collates of I-JEPA, SimMIM and MSN: shapes, determinism under the loader's generator."""

from __future__ import annotations

import pytest
import torch

from dinolite.data.augment import CropRecipe
from dinolite.data.masked_collate import (
    SingleViewAugmentation,
    collate_ijepa,
    collate_mae,
    collate_msn,
    collate_simmim,
)
from dinolite.data.masked_views import MultiBlockMaskGenerator, SimMIMMaskGenerator
from dinolite.data.views import MultiViewAugmentation


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g) for _ in range(n)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_single_view_is_normalised_and_reproducible():
    aug = SingleViewAugmentation(
        CropRecipe(
            32, (0.3, 1.0), blur_p=0.0, solarize_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, horizontal_flip_p=0.0
        ),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    img = _images(1)[0]
    a, b = aug(img, _gen(1))["image"], aug(img, _gen(1))["image"]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6


def test_collate_ijepa_and_simmim():
    aug = SingleViewAugmentation(CropRecipe(32, (0.3, 1.0), blur_p=0.0, solarize_p=0.0))
    samples = [aug(img, _gen(i)) for i, img in enumerate(_images(4))]
    batch = collate_ijepa(samples, MultiBlockMaskGenerator(8, min_keep=4), _gen(0))
    assert batch["images"].shape == (4, 3, 32, 32)
    assert batch["context_idx"].shape[0] == 4 and batch["target_idx"].shape[:2] == (4, 4)
    again = collate_ijepa(samples, MultiBlockMaskGenerator(8, min_keep=4), _gen(0))
    assert torch.equal(batch["context_idx"], again["context_idx"])
    simmim = collate_simmim(samples, SimMIMMaskGenerator(32, mask_patch_size=8, model_patch_size=4), _gen(0))
    assert simmim["masks"].shape == (4, 64) and torch.all(simmim["masks"].sum(1) == 10 * 4)
    with pytest.raises(ValueError, match="drawn for 64 px"):
        collate_simmim(samples, SimMIMMaskGenerator(64, mask_patch_size=8, model_patch_size=4), _gen(0))


def test_collate_msn_views_and_patch_drop():
    recipe = CropRecipe(32, (0.3, 1.0), blur_p=0.0, solarize_p=0.0)
    aug = MultiViewAugmentation([recipe, recipe], CropRecipe(16, (0.1, 0.3), blur_p=0.0, solarize_p=0.0), 3)
    samples = [aug(img, _gen(i)) for i, img in enumerate(_images(5))]
    batch = collate_msn(samples, patch_size=4, mask_ratio=0.25, generator=_gen(0))
    assert batch["target_views"].shape == batch["anchor_views"].shape == (5, 3, 32, 32)
    assert batch["focal_views"].shape == (15, 3, 16, 16)
    assert torch.equal(batch["focal_views"][5], samples[0]["local_crops"][1])  # view-major
    assert batch["anchor_keep"].shape == (5, 48) and batch["focal_keep"].shape == (15, 12)
    assert torch.equal(batch["anchor_keep"], collate_msn(samples, 4, 0.25, _gen(0))["anchor_keep"])
    # msn.focal_patch_drop=false, the released MSN's: the focal views keep every patch, the anchors still drop
    released = collate_msn(samples, 4, 0.25, _gen(0), focal_patch_drop=False)
    assert torch.equal(released["focal_keep"], torch.arange(16).expand(15, -1))
    assert torch.equal(released["anchor_keep"], batch["anchor_keep"])


def test_collate_msn_several_anchors_and_one_subset_per_batch():
    recipe = CropRecipe(32, (0.3, 1.0), blur_p=0.0, solarize_p=0.0)
    focal = CropRecipe(16, (0.1, 0.3), blur_p=0.0, solarize_p=0.0)
    aug = MultiViewAugmentation([recipe] * 3, focal, 2)  # target + msn.anchor_views=2 full-size anchors
    samples = [aug(img, _gen(i)) for i, img in enumerate(_images(4))]
    batch = collate_msn(samples, 4, 0.15, _gen(0), patch_drop_per="batch", patch_drop_rounding="floor")
    assert batch["anchor_views"].shape == (8, 3, 32, 32)  # view-major: every image's anchor 1, then anchor 2
    assert torch.equal(batch["anchor_views"][4], samples[0]["global_crops"][2])
    assert torch.equal(batch["target_views"][1], samples[1]["global_crops"][0])
    # floor(64 x 0.85) = 54 (round: 54 as well); 16 x 0.85 = 13.6: floor 13 where round keeps 14
    assert batch["anchor_keep"].shape == (8, 54) and batch["focal_keep"].shape == (8, 13)
    for keep in (batch["anchor_keep"], batch["focal_keep"]):  # the release's one permutation per forward
        assert all(torch.equal(row, keep[0]) for row in keep)
    assert collate_msn(samples, 4, 0.15, _gen(0))["focal_keep"].shape == (8, 14)
    with pytest.raises(ValueError, match="at least 2 large views"):
        collate_msn([{"global_crops": s["global_crops"][:1], "local_crops": []} for s in samples], 4, 0.15)


def test_collate_mae_draws_maes_masking_from_the_batch_generator():
    samples = [{"image": torch.randn(3, 16, 16)} for _ in range(3)]
    batch = collate_mae(samples, patch_size=4, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert batch["images"].shape == (3, 3, 16, 16)
    assert batch["ids_keep"].shape == (3, 4) and batch["ids_restore"].shape == (3, 16)
    for keep, restore in zip(batch["ids_keep"], batch["ids_restore"]):
        assert sorted((restore < 4).nonzero().flatten().tolist()) == sorted(keep.tolist())
    again = collate_mae(samples, patch_size=4, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["ids_keep"], batch["ids_keep"])
    with pytest.raises(ValueError, match="patches of 5 px"):
        collate_mae(samples, patch_size=5, mask_ratio=0.75)
