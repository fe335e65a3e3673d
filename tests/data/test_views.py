"""Two-view augmentation of the joint-embedding methods: recipes, reproducibility, empirical rates, collate."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dinolite.data import augment
from dinolite.data.augment import CropRecipe
from dinolite.data.views import (
    MultiViewAugmentation,
    blur_kernel_for,
    byol_views,
    collate_views,
    simclr_views,
)


def _image(h=40, w=48, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_published_recipes():
    a, b = byol_views(224)
    assert (a.blur_p, b.blur_p, a.solarize_p, b.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert a.scale == (0.08, 1.0) and a.color_jitter == (0.4, 0.4, 0.2, 0.1) and a.color_jitter_p == 0.8
    s1, s2 = simclr_views(224)
    assert s1 == s2 and s1.color_jitter == (0.8, 0.8, 0.8, 0.2) and s1.blur_kernel_size == 23
    assert blur_kernel_for(32) == 3 and blur_kernel_for(96) == 11


def test_views_shapes_reproducible_and_multicrop():
    aug = MultiViewAugmentation(byol_views(32), local_view=CropRecipe(16, (0.05, 0.3), 0.5, 0.0), local_views_number=3)
    out = aug(_image(), generator=torch.Generator().manual_seed(3))
    assert [v.shape for v in out["global_crops"]] == [(3, 32, 32)] * 2
    assert [v.shape for v in out["local_crops"]] == [(3, 16, 16)] * 3
    again = aug(_image(), generator=torch.Generator().manual_seed(3))
    assert all(
        torch.equal(x, y)
        for x, y in zip(out["global_crops"] + out["local_crops"], again["global_crops"] + again["local_crops"])
    )
    other = aug(_image(), generator=torch.Generator().manual_seed(4))
    assert not torch.equal(out["global_crops"][0], other["global_crops"][0])
    assert not torch.equal(out["global_crops"][0], out["global_crops"][1])


def test_collate_is_view_major():
    aug = MultiViewAugmentation(simclr_views(8))
    samples = [aug(_image(seed=i), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    batch = collate_views(samples)
    assert batch["collated_global_crops"].shape == (6, 3, 8, 8) and batch["collated_local_crops"].shape == (0, 3, 0, 0)
    assert torch.equal(batch["collated_global_crops"][1], samples[1]["global_crops"][0])
    assert torch.equal(batch["collated_global_crops"][4], samples[1]["global_crops"][1])


def test_bad_recipes_and_views():
    with pytest.raises(ValueError, match="solarize_p"):
        CropRecipe(8, (0.1, 1.0), blur_p=0.5, solarize_p=1.5)
    with pytest.raises(ValueError, match="at least 2 views"):
        MultiViewAugmentation([CropRecipe(8, (0.1, 1.0), 0.5, 0.0)])
    with pytest.raises(ValueError, match="local_view recipe"):
        MultiViewAugmentation(simclr_views(8), local_views_number=2)


def test_empirical_rates_per_view(monkeypatch):
    """The stated probability of every photometric op, per view, measured over many draws."""
    calls = {"jitter": 0, "gray": 0, "blur": 0, "solarize": 0, "flip": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(augment, "gaussian_blur", counting("blur", augment.gaussian_blur))
    monkeypatch.setattr(augment, "solarize", counting("solarize", augment.solarize))
    monkeypatch.setattr(augment.TF, "rgb_to_grayscale", counting("gray", TF.rgb_to_grayscale))
    monkeypatch.setattr(augment.TF, "horizontal_flip", counting("flip", TF.horizontal_flip))
    monkeypatch.setattr(augment.TF, "adjust_brightness", counting("jitter", TF.adjust_brightness))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        view1, view2 = byol_views(8)
        aug = MultiViewAugmentation([view1, view2])
        img, generator, n = _image(16, 16), torch.Generator().manual_seed(0), 1200
        rates = []
        for recipe in (view1, view2):
            for key in calls:
                calls[key] = 0
            for _ in range(n):
                aug._view(img, recipe, generator)
            rates.append({key: value / n for key, value in calls.items()})
    finally:
        torch.set_num_threads(threads)
    tol = 0.06  # > 4 binomial standard deviations at n = 1200
    for rate in rates:
        assert abs(rate["jitter"] - 0.8) < tol and abs(rate["gray"] - 0.2) < tol and abs(rate["flip"] - 0.5) < tol
    assert rates[0]["blur"] == 1.0 and abs(rates[1]["blur"] - 0.1) < tol
    assert rates[0]["solarize"] == 0.0 and abs(rates[1]["solarize"] - 0.2) < tol
