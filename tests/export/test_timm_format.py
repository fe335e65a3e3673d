"""The timm layout: a timm model built from the export gives the backbone's features."""

from __future__ import annotations

import json

import pytest
import torch

from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_timm
from tests.export.test_writers import _features, _tiny


@pytest.mark.parametrize("registers,ffn_layer", [(0, "mlp"), (4, "mlp"), (0, "swiglu")])
def test_timm_model_gives_the_same_features(tmp_path, registers, ffn_layer):
    timm = pytest.importorskip("timm")
    model = _tiny(num_register_tokens=registers, ffn_layer=ffn_layer)
    spec = spec_from_backbone(model)
    write_timm(model.state_dict(), spec, tmp_path / "timm.safetensors")
    record = json.loads((tmp_path / "timm.safetensors.json").read_text())
    expected_name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    assert record["timm_model"] == expected_name

    from safetensors.torch import load_file

    from dinolite.export.timm_format import timm_model_args

    name, kwargs = timm_model_args(spec)
    timm_model = timm.create_model(name, pretrained=False, **kwargs).eval()
    timm_model.load_state_dict(load_file(str(tmp_path / "timm.safetensors")), strict=True)
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = timm_model.forward_features(images)
    cls, patches = _features(model, images)
    torch.testing.assert_close(tokens[:, 0], cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 1 + registers :], patches, rtol=1e-4, atol=1e-5)


def test_a_cls_free_backbone_is_not_taken_for_timms_patch_only_layout():
    """timm's no_embed_class tables are patch-only beside a cls_token; a CLS-free backbone's table is patch-only
    without one: DINOv2's own layout, loaded as it is."""
    from dinolite.export.load import to_dinov2_layout
    from dinolite.export.timm_format import is_timm_layout, to_timm_state_dict

    cls_free = _tiny(cls_token=False).state_dict()
    assert not is_timm_layout(cls_free)
    assert to_dinov2_layout(cls_free, "x.pth") is cls_free
    assert is_timm_layout(to_timm_state_dict(_tiny(num_register_tokens=2).state_dict()))
