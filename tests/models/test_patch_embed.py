"""Patch embedding: one strided convolution per patch, tokens in row-major order of the patch grid."""

from __future__ import annotations

import pytest
import torch

from dinolite.models.patch_embed import PatchEmbed


def test_each_token_is_its_patch_projected_in_row_major_order():
    torch.manual_seed(0)
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=2, embed_dim=3)
    images = torch.randn(2, 2, 8, 12)  # a 2 x 3 grid of patches (another size than img_size)
    tokens = embed(images)
    assert tokens.shape == (2, 6, 3)
    weight, bias = embed.proj.weight.flatten(1), embed.proj.bias
    for row in range(2):
        for col in range(3):
            patch = images[:, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4].flatten(1)
            torch.testing.assert_close(tokens[:, 3 * row + col], patch @ weight.T + bias)
    assert (embed.grid_size, embed.num_patches) == (2, 4)


def test_sizes_that_are_not_multiples_of_the_patch_are_refused():
    with pytest.raises(ValueError, match="img_size=10 is not a multiple of patch_size=4"):
        PatchEmbed(img_size=10, patch_size=4, in_chans=3, embed_dim=8)
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match="image size 8x10"):
        embed(torch.zeros(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got \(3, 8, 8\)"):
        embed(torch.zeros(3, 8, 8))
