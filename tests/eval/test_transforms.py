"""Evaluation transforms: DINOv2's resize-then-centre-crop, any channel count to RGB, sizes checked."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dinolite.eval.transforms import (
    ToRGBTensor,
    build_eval_transform,
    build_linear_train_transform,
    default_resize_size,
)


def test_the_resize_is_dinov2s_256_over_224():
    assert default_resize_size(224) == 256 and default_resize_size(98) == 112


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGBA", 4), ("RGB", 3), ("P", 1)])
def test_every_image_becomes_three_uint8_channels(mode, channels):
    image = Image.new(mode, (5, 4), color=7 if channels == 1 else (7,) * channels)
    tensor = ToRGBTensor()(image)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.uint8
    grey = torch.full((1, 4, 5), 9, dtype=torch.uint8)
    assert torch.equal(ToRGBTensor()(grey), grey.expand(3, -1, -1))
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels, got shape \(2, 4, 5\)"):
        ToRGBTensor()(torch.zeros(2, 4, 5, dtype=torch.uint8))


def test_the_eval_transform_crops_the_centre_and_normalises():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[:, 10:30, 20:40] = 255  # a white square in the middle
    out = build_eval_transform(crop_size=20, resize_size=40, mean=(0.5,) * 3, std=(0.5,) * 3)(image)
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones(3, 20, 20))  # (1 - 0.5) / 0.5 everywhere: the centre only


def test_the_linear_train_transform_gives_the_crop_size():
    out = build_linear_train_transform(crop_size=16, patch_size=8)(torch.zeros(3, 50, 30, dtype=torch.uint8))
    assert out.shape == (3, 16, 16)


def test_impossible_sizes_name_the_flags():
    with pytest.raises(ValueError, match="--crop-size 32 / --resize-size 16"):
        build_eval_transform(crop_size=32, resize_size=16)
    with pytest.raises(ValueError, match="--crop-size 30 is not a multiple of the backbone's patch size 14"):
        build_eval_transform(crop_size=30, patch_size=14)
    with pytest.raises(ValueError, match="--crop-size 0"):
        build_linear_train_transform(crop_size=0)
