import pytest
import torch

from dinolite.data.collate import collate_data_and_cast
from dinolite.data.masking import MaskingGenerator


def _samples(batch):
    # crop c of image i is filled with the value 10 * i + c, so the layout can be read back
    return [
        {
            "global_crops": [torch.full((3, 8, 8), 10.0 * i + c) for c in range(2)],
            "local_crops": [torch.full((3, 4, 4), 10.0 * i + 2 + c) for c in range(3)],
        }
        for i in range(batch)
    ]


def test_collate_outputs():
    B, n_tokens = 4, 64
    out = collate_data_and_cast(
        _samples(B),
        (0.1, 0.5),
        0.5,
        n_tokens,
        MaskingGenerator((8, 8)),
        dtype=torch.float16,
        generator=torch.Generator().manual_seed(0),
    )
    g, l = out["collated_global_crops"], out["collated_local_crops"]
    assert g.shape == (2 * B, 3, 8, 8) and l.shape == (3 * B, 3, 4, 4) and g.dtype == torch.float16
    assert [g[k, 0, 0, 0].item() for k in range(2 * B)] == [0, 10, 20, 30, 1, 11, 21, 31]  # crop-major
    assert [l[k, 0, 0, 0].item() for k in range(3 * B)] == [10 * i + 2 + c for c in range(3) for i in range(B)]
    masks = out["collated_masks"]
    assert masks.shape == (2 * B, n_tokens) and masks.dtype == torch.bool
    per_image = masks.sum(1)
    assert int((per_image > 0).sum()) == 4  # half of the 8 global crops
    # stratified ratios: linspace(0.1, 0.5, 5) -> the i-th masked crop asks for <= int(64 * p_{i+1})
    assert sorted(per_image[per_image > 0].tolist()) <= [12, 19, 25, 32]
    assert all(a <= b for a, b in zip(sorted(per_image[per_image > 0].tolist()), [12, 19, 25, 32]))
    assert out["upperbound"] == 12 + 19 + 25 + 32
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert out["n_masked_patches"].tolist() == [int(masks.sum())]
    # each masked patch weighs 1 / (#masked patches of its image): the weights of an image sum to 1
    image_of_patch = out["mask_indices_list"] // n_tokens
    expected = 1.0 / per_image[image_of_patch].float()
    assert torch.allclose(out["masks_weight"], expected)
    assert torch.isclose(out["masks_weight"].sum(), torch.tensor(4.0))


def test_collate_accepts_pairs_and_is_seeded():
    pairs = [(s, 0) for s in _samples(2)]
    args = ((0.1, 0.5), 0.5, 64, MaskingGenerator((8, 8)))
    a = collate_data_and_cast(pairs, *args, generator=torch.Generator().manual_seed(1))
    b = collate_data_and_cast(pairs, *args, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["collated_masks"], b["collated_masks"])
    none = collate_data_and_cast(pairs, (0.1, 0.5), 0.0, 64, MaskingGenerator((8, 8)))
    assert none["collated_masks"].sum() == 0 and none["masks_weight"].numel() == 0 and none["upperbound"] == 0
    with pytest.raises(ValueError, match="mask_ratio_tuple"):
        collate_data_and_cast(pairs, (0.6, 0.5), 0.5, 64, MaskingGenerator((8, 8)))


def test_gram_teacher_crops_are_collated_crop_major_like_the_global_crops():
    samples = _samples(3)
    for i, sample in enumerate(samples):
        sample["gram_teacher_crops"] = [torch.full((3, 16, 16), 10.0 * i + c) for c in range(2)]
    out = collate_data_and_cast(samples, (0.1, 0.5), 0.5, 64, MaskingGenerator((8, 8)), dtype=torch.float16)
    teacher = out["collated_gram_teacher_crops"]
    assert teacher.shape == (6, 3, 16, 16) and teacher.dtype == torch.float16
    assert [teacher[k, 0, 0, 0].item() for k in range(6)] == [0, 10, 20, 1, 11, 21]  # crop-major
    assert "collated_gram_teacher_crops" not in collate_data_and_cast(
        _samples(3), (0.1, 0.5), 0.5, 64, MaskingGenerator((8, 8))
    )
