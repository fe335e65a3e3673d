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


@pytest.mark.parametrize("normalize", ["separate", "max", "min"])
def test_traced_rope_coordinates_equal_the_backbones(normalize):
    from dinolite.export.onnx_pos_embed import traced_rope_coordinates
    from dinolite.models.rope import RopePositionEmbedding

    rope = RopePositionEmbedding(16, 1, normalize_coords=normalize)
    for rows, cols in ((4, 4), (2, 6), (7, 3)):
        expected = rope.coordinates(rows, cols)
        torch.testing.assert_close(traced_rope_coordinates(rope, rows, cols), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("normalize", ["separate", "max"])
def test_a_rope_backbone_exports_to_onnx_valid_at_every_size_and_without_tile(normalize, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dinolite.export.spec import spec_from_backbone
    from dinolite.export.writers import write_onnx
    from dinolite.models import DinoVisionTransformer

    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_register_tokens=2,
        pos_embed_type="rope", rope={"normalize_coords": normalize},
    ).eval()  # fmt: skip
    path = tmp_path / "rope.onnx"
    write_onnx(model, spec_from_backbone(model), path)
    assert "Tile" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((16, 16), (24, 32)):  # the export size and another (non-square)
        images = torch.randn(2, 3, height, width)
        cls, patches = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model.forward_features(images)
        torch.testing.assert_close(torch.from_numpy(cls), expected["x_norm_clstoken"], atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.from_numpy(patches), expected["x_norm_patchtokens"], atol=1e-5, rtol=0)
