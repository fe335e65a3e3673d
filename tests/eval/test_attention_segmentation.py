"""DINO's attention-segmentation protocol on constructed attention maps and images, with hand values."""

import pytest
import torch
from torch import nn

from dinolite.eval import attention_segmentation as attnseg
from dinolite.export.spec import spec_from_backbone
from dinolite.models.vision_transformer import DinoVisionTransformer


def _grid(*values: float) -> torch.Tensor:
    """A 2x2 attention map, row-major."""
    return torch.tensor(values, dtype=torch.float64).reshape(2, 2)


def test_the_kept_patches_are_the_fewest_largest_ones_reaching_the_mass():
    attention = _grid(0.125, 0.5, 0.125, 0.25)
    # 0.5 has nothing above it, 0.25 has 0.5 < 0.6 above it, each 0.125 has >= 0.75: kept {0.5, 0.25}.
    assert attnseg.keep_top_mass(attention, 0.6).tolist() == [[False, True], [False, True]]
    # Exactly reached at 0.75: the next patch (0.75 above it) is not kept.
    assert attnseg.keep_top_mass(attention, 0.75).tolist() == [[False, True], [False, True]]
    assert attnseg.keep_top_mass(attention, 0.5).tolist() == [[False, True], [False, False]]
    assert attnseg.keep_top_mass(attention, 1.0).all()
    # Scale-free: the map is renormalised first (the CLS->CLS weight is not in it).
    assert torch.equal(attnseg.keep_top_mass(3 * attention, 0.6), attnseg.keep_top_mass(attention, 0.6))


def test_keep_top_mass_equals_dinos_ascending_cumulative_rule_per_head():
    """Reference written from DINO's visualisation: sort ascending, keep where the cumulative mass > 1 - mass."""
    torch.manual_seed(0)
    attention = torch.rand(3, 4, 5, 6).softmax(dim=-1)  # (images, heads, h, w), no ties
    flat = attention.flatten(-2)
    flat = flat / flat.sum(dim=-1, keepdim=True)
    values, order = flat.sort(dim=-1)
    reference = torch.zeros_like(flat, dtype=torch.bool).scatter(-1, order, values.cumsum(-1) > 1 - 0.6)
    kept = attnseg.keep_top_mass(attention, 0.6)
    assert torch.equal(kept, reference.reshape(attention.shape))
    assert kept.shape == attention.shape


def test_keep_top_mass_refuses_a_mass_outside_0_1():
    with pytest.raises(ValueError, match="mass=0"):
        attnseg.keep_top_mass(_grid(1, 1, 1, 1), 0.0)


def test_object_patches_are_those_with_at_least_the_fraction_of_ink_pixels():
    pixels = torch.zeros(1, 3, 4, 4)
    pixels[0, :, 0, 0:2] = 1.0  # top-left patch: 2 of 4 pixels ink -> object (ties go to object)
    pixels[0, :, 0, 2] = 1.0  # top-right patch: 1 of 4 -> not object
    pixels[0, :, 2:4, 2:4] = 0.1  # bottom-right: all pixels exactly at the threshold -> not ink (strict >)
    pixels[0, 0, 2:4, 0:2] = 0.9  # bottom-left: red only, channel mean 0.3 -> ink
    objects = attnseg.object_patch_masks(pixels, patch_size=2, ink_threshold=0.1, min_fraction=0.5)
    assert objects.tolist() == [[[True, False], [True, False]]]
    assert attnseg.object_patch_masks(pixels, 2, 0.1, min_fraction=0.75).tolist() == [[[False, False], [True, False]]]
    with pytest.raises(ValueError, match="not a multiple of the patch size 3"):
        attnseg.object_patch_masks(pixels, 3)


def test_jaccard_by_hand():
    predicted = torch.tensor([[True, True], [False, False]])
    target = torch.tensor([[False, True], [True, False]])
    assert attnseg.jaccard(predicted, target).item() == pytest.approx(1 / 3)
    assert attnseg.jaccard(predicted, predicted).item() == 1.0
    nothing = torch.zeros(2, 2, dtype=torch.bool)
    assert attnseg.jaccard(nothing, nothing).item() == 1.0  # both empty: identical
    assert attnseg.jaccard(predicted, nothing).item() == 0.0
    assert attnseg.jaccard(torch.stack([predicted, target]), target).tolist() == pytest.approx([1 / 3, 1.0])


class _ConstructedAttention(nn.Module):
    """A backbone stand-in whose last-block attention is given: 1 CLS + 4 patches (a 2x2 grid of 4 px
    patches), head 0 on the top-left patch only, head 1 uniform over the patches."""

    patch_size = 4
    num_register_tokens = 0
    cls_token = nn.Parameter(torch.zeros(1))

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.zeros(x.shape[0], 2, 5, 5)
        weights[:, 0, 0, :2] = torch.tensor([0.5, 0.5])  # CLS->CLS 0.5 (dropped), CLS->patch 0
        weights[:, 1, 0] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
        return weights


def _images_with_object_at_top_left(count: int) -> torch.Tensor:
    pixels = torch.zeros(count, 3, 8, 8)
    pixels[:, :, :4, :4] = 1.0
    return pixels


def test_per_head_jaccard_best_head_and_mean_over_images_by_hand():
    """Object = the top-left patch. Head 0 keeps it alone: J = 1. Head 1 (uniform) keeps 3 patches (0, 0.25 and
    0.5 of the mass above them are < 0.6) of which the object may or may not be one: the sort is stable,
    so the first three in patch order, the object included: J = 1/3. Every patch: J = 1/4."""
    blank = torch.zeros(1, 3, 8, 8)  # no object: skipped and counted
    batches = [_images_with_object_at_top_left(2), torch.cat([_images_with_object_at_top_left(1), blank])]
    scores, shown = attnseg.measure_attention_jaccard(
        _ConstructedAttention(), batches, mean=(0.0,) * 3, std=(1.0,) * 3, examples=2
    )
    assert scores.per_head == pytest.approx([100.0, 100 / 3])
    assert (scores.best_head, scores.best, scores.mean) == (0, pytest.approx(100.0), pytest.approx(200 / 3))
    assert scores.per_head_kept_share == pytest.approx([25.0, 75.0])  # 1 and 3 of the 4 patches
    assert scores.per_head_precision == pytest.approx([100.0, 100 / 3])  # the object is 1 of the 3 kept
    assert scores.every_patch == pytest.approx(25.0)
    assert scores.brightest_patches == pytest.approx(100.0)  # all the light is in the object patch
    assert (scores.num_images, scores.skipped_without_object) == (3, 1)
    assert scores.to_dict()["per_head_jaccard"] == scores.per_head
    assert len(shown.pixels) == 2 and shown.kept[0].shape == (2, 2, 2)
    _, strided = attnseg.measure_attention_jaccard(
        _ConstructedAttention(), batches, (0.0,) * 3, (1.0,) * 3, examples=5, example_stride=3
    )
    assert [bool(p.any()) for p in strided.pixels] == [True, False]  # images 0 and 3 of 0..3 (3 is the blank)
    assert shown.objects[0].tolist() == [[True, False], [False, False]]
    assert shown.jaccard[0].tolist() == pytest.approx([1.0, 1 / 3])


def test_only_background_images_are_refused_naming_the_threshold():
    with pytest.raises(ValueError, match="ink threshold 0.1"):
        attnseg.measure_attention_jaccard(_ConstructedAttention(), [torch.zeros(2, 3, 8, 8)], (0.0,) * 3, (1.0,) * 3)


def _tiny_vit(cls_token: bool = True) -> DinoVisionTransformer:
    torch.manual_seed(1)
    model = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, cls_token=cls_token)
    model.spec = spec_from_backbone(model, train_img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    return model.eval()


def test_a_backbone_without_cls_token_is_refused_by_name():
    with pytest.raises(ValueError, match="--backbone run/x: the backbone has no CLS token"):
        attnseg.require_cls_token(_tiny_vit(cls_token=False), "--backbone run/x")
    with pytest.raises(ValueError, match="no CLS token"):
        attnseg.measure_attention_jaccard(_tiny_vit(cls_token=False), [torch.ones(1, 3, 16, 16)], (0,) * 3, (1,) * 3)


def test_random_init_is_the_same_architecture_seeded_and_leaves_the_global_rng_alone():
    trained = _tiny_vit()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    fresh = attnseg.random_init_like(trained, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = attnseg.random_init_like(trained, seed=5)
    other = attnseg.random_init_like(trained, seed=6)
    assert fresh.state_dict().keys() == trained.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], again.state_dict()[k]) for k in fresh.state_dict())
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
    assert fresh.spec is trained.spec and not fresh.training
    with pytest.raises(ValueError, match="no .spec"):
        attnseg.random_init_like(
            DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2), 0
        )


def test_image_batches_read_a_folder_in_order_resized_to_0_1(tmp_path):
    from PIL import Image

    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.new("L", (8, 8), color=50 * i).save(folder / f"{i}.png")
    batches = list(attnseg.image_batches([str(tmp_path / "data")], size=16, batch_size=2, max_images=3))
    assert [b.shape for b in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)]
    grey = torch.cat(batches)[:, :, 8, 8]
    assert grey[:, 0].tolist() == pytest.approx([0.0, 50 / 255, 100 / 255], abs=1e-3)
