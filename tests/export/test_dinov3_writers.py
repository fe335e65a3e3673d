"""dinolite-export's files for a RoPE backbone, in DINOv3's layouts: each opens in its library with the same
features (DINOv3's own code's weights, tests/fixtures/released/dinov3_rope.safetensors, in dinolite's backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dinolite
from dinolite.export.dinov3_format import from_dinov3_state_dict
from dinolite.export.dinov3_writers import write_rope_backbone
from dinolite.export.spec import ExportFormatError, spec_from_backbone
from dinolite.models import DinoVisionTransformer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "released" / "dinov3_rope.safetensors"
ATOL = 1e-5  # measured: 2.1e-6 at most


@pytest.fixture(scope="module")
def dinov3_weights() -> dict[str, torch.Tensor]:
    return {k.removeprefix("weights/"): v for k, v in load_file(str(FIXTURE)).items() if k.startswith("weights/")}


@pytest.fixture(scope="module")
def backbone(dinov3_weights) -> DinoVisionTransformer:
    model = DinoVisionTransformer(
        img_size=16, patch_size=4, embed_dim=192, depth=2, num_heads=3, mlp_ratio=1.0, init_values=1e-5,
        num_register_tokens=4, pos_embed_type="rope", layernorm_eps=1e-5,
    )  # fmt: skip
    model.load_state_dict(from_dinov3_state_dict(dinov3_weights, img_size=16))
    return model.eval()


def test_the_pth_is_dinov3s_own_layout(backbone, dinov3_weights, tmp_path) -> None:
    path = tmp_path / "dinov3_tiny.pth"
    write_rope_backbone("dinov2", backbone.state_dict(), spec_from_backbone(backbone), path)
    written = torch.load(path, weights_only=True)
    assert sorted(written) == sorted(dinov3_weights)  # the keys DINOv3's ViT loads with strict=True
    loaded = dinolite.load_backbone(path)
    images = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), backbone(images))


def test_the_timm_file_and_its_record_build_the_model(backbone, tmp_path) -> None:
    timm = pytest.importorskip("timm")
    path = tmp_path / "dinov3_tiny_timm.safetensors"
    written = write_rope_backbone("timm", backbone.state_dict(), spec_from_backbone(backbone), path)
    record = json.loads(written[1].read_text())
    model = timm.create_model(record["timm_model"], pretrained=False, **record["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(path)), strict=True)
    images = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone(images), atol=ATOL, rtol=0)


def test_the_transformers_folder_opens_with_from_pretrained(backbone, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "dinov3-tiny"
    write_rope_backbone("transformers", backbone.state_dict(), spec_from_backbone(backbone), folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(model).__name__ == "DINOv3ViTModel"
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=images).pooler_output, backbone(images), atol=ATOL, rtol=0)


def test_other_formats_are_refused(backbone, tmp_path) -> None:
    with pytest.raises(ExportFormatError, match="exports as safetensors, onnx or DINOv3's layouts"):
        write_rope_backbone("timm-hub", backbone.state_dict(), spec_from_backbone(backbone), tmp_path / "x")
