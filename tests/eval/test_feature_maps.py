"""Feature maps: one CLS attention map per head summing to one, and PCA colours that find the object."""

import pytest
import torch

from dinolite.eval import feature_maps
from tests.eval.test_visualize import _tiny_vit


@pytest.mark.parametrize("registers", [0, 2])
def test_attention_maps_have_one_map_per_head_that_sums_to_one(registers):
    model = _tiny_vit(registers)
    images = torch.randn(3, 3, 32, 48)
    maps = feature_maps.cls_attention_maps(model, images)
    assert maps.shape == (3, 4, 4, 6)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(3, 4))
    assert (maps >= 0).all()
    # The maps are the CLS row of the last block without CLS/register columns, rescaled.
    raw = model.get_last_selfattention(images)[:, :, 0, 1 + registers :]
    torch.testing.assert_close(maps.reshape(3, 4, -1), raw / raw.sum(-1, keepdim=True))


def test_attention_rejects_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="not a multiple of the backbone's patch size 8"):
        feature_maps.cls_attention_maps(_tiny_vit(), torch.randn(1, 3, 30, 32))


def test_attention_maps_need_a_cls_token():
    with pytest.raises(ValueError, match="the backbone has no CLS token"):
        feature_maps.cls_attention_maps(_tiny_vit(cls_token=False), torch.randn(1, 3, 32, 32))


def _object_on_background(b: int = 2, h: int = 8, w: int = 8, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[2:6, 3:7] = True
    background, foreground = torch.randn(d, generator=g), torch.randn(d, generator=g) * 3
    feats = background.expand(b, h, w, d).clone()
    feats[:, inside] = foreground
    feats += 0.05 * torch.randn(b, h, w, d, generator=g)
    return feats, inside


def test_pca_foreground_threshold_finds_the_object():
    feats, inside = _object_on_background()
    rgb, foreground = feature_maps.pca_rgb(feats, foreground_threshold=0.5)
    assert rgb.shape == (2, 8, 8, 3)
    assert torch.equal(foreground, inside.expand(2, 8, 8))
    assert (rgb[:, ~inside] == 0).all()  # background is black
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_pca_without_threshold_colours_every_patch_in_unit_range():
    feats, inside = _object_on_background()
    rgb, foreground = feature_maps.pca_rgb(feats)
    assert foreground.all()
    assert rgb.min() == pytest.approx(0.0) and rgb.max() == pytest.approx(1.0)
    # The first component separates object from background: the red channel differs between them.
    assert abs(rgb[:, inside, 0].mean() - rgb[:, ~inside, 0].mean()) > 0.8


@pytest.mark.parametrize("registers", [0, 2])
def test_cls_attention_shares_split_the_cls_row_between_cls_registers_and_patches(registers):
    model = _tiny_vit(registers)
    images = torch.randn(3, 3, 32, 32)
    shares = feature_maps.cls_attention_shares(model, images)
    assert shares.shape == (3, 4, 3)
    torch.testing.assert_close(shares.sum(dim=-1), torch.ones(3, 4))
    raw = model.get_last_selfattention(images)[:, :, 0]
    torch.testing.assert_close(shares[..., 0], raw[..., 0])
    torch.testing.assert_close(shares[..., 1], raw[..., 1 : 1 + registers].sum(-1))
    if registers == 0:
        assert (shares[..., 1] == 0).all()


@pytest.mark.parametrize("registers", [0, 2])
def test_patch_token_norms_are_the_prenorm_patch_tokens_norms_on_the_patch_grid(registers):
    model = _tiny_vit(registers)
    images = torch.randn(2, 3, 32, 48)
    norms = feature_maps.patch_token_norms(model, images)
    assert norms.shape == (2, 4, 6)
    prenorm = model.forward_features(images)["x_prenorm"]
    assert prenorm.shape[1] == 1 + registers + 24  # CLS and registers are left out of the map
    torch.testing.assert_close(norms.reshape(2, -1), prenorm[:, 1 + registers :].norm(dim=-1))
    # before the final LayerNorm: the normalised tokens would all have about the same norm
    assert norms.std() > model.forward_features(images)["x_norm_patchtokens"].norm(dim=-1).std()
