"""The ONNX-friendly patch embedding and position-embedding resampling equal the backbone's own."""

from __future__ import annotations

import pytest
import torch

from tests.export.test_writers import _tiny


def test_patchify_embed_equals_the_conv_patch_embedding():
    from dinolite.export.onnx_pos_embed import patchify_embed

    model = _tiny()
    images = torch.randn(2, 3, 42, 56)
    expected = model.patch_embed(images)
    proj = model.patch_embed.proj
    torch.testing.assert_close(patchify_embed(images, proj.weight, proj.bias, 14), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):
        patchify_embed(torch.randn(1, 3, 30, 28), proj.weight, proj.bias, 14)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, False), (0.0, True), (0.1, True)])
def test_graph_friendly_pos_embed_resampling_equals_the_backbones(offset, antialias):
    from dinolite.export.onnx_pos_embed import resample_pos_embed
    from dinolite.models.pos_embed import interpolate_pos_embed

    torch.manual_seed(0)
    for side, cls_rows in ((2, 1), (5, 1), (37, 1), (5, 0), (2, 0)):  # 0: a CLS-free table (I-JEPA's encoder)
        pos_embed = torch.randn(1, cls_rows + side * side, 8)
        for h, w in [(side, side), (side + 1, side), (3, 7), (1, 1), (2 * side, side + 3), (side, 1)]:
            expected = interpolate_pos_embed(pos_embed, (h, w), offset, antialias)
            got = resample_pos_embed(pos_embed, torch.arange(h), torch.arange(w), offset, antialias)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
