"""transformers' Dinov2Model layout: our backbone maps there and back unchanged, with what transformers always
has filled in neutrally; task models and unknown keys are refused. (Loading in transformers itself, with
identical features: tests/export/test_hub.py.)"""

from __future__ import annotations

import pytest
import torch

from dinolite.export.errors import ExportFormatError
from dinolite.export.spec import spec_from_backbone
from dinolite.export.transformers_format import (
    from_transformers_state_dict,
    is_transformers_layout,
    preprocessor_config,
    to_transformers_state_dict,
    transformers_config,
)
from dinolite.models import DinoVisionTransformer


def _model(**overrides) -> DinoVisionTransformer:
    torch.manual_seed(0)
    kwargs = dict(img_size=28, patch_size=14, embed_dim=384, depth=2, num_heads=6, init_values=1e-5)
    return DinoVisionTransformer(**{**kwargs, **overrides})


@pytest.mark.parametrize("overrides", [{}, {"num_register_tokens": 4, "ffn_layer": "swiglu"}])
def test_there_and_back_is_the_identity(overrides):
    model = _model(**overrides)
    ours = model.state_dict()
    theirs = to_transformers_state_dict(ours, spec_from_backbone(model))
    assert is_transformers_layout(theirs) and not is_transformers_layout(ours)
    query = theirs["encoder.layer.1.attention.attention.query.weight"]
    assert torch.equal(query, ours["blocks.1.attn.qkv.weight"][:384])  # q, k, v are the thirds of qkv
    back = from_transformers_state_dict(theirs)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[key], value) for key, value in ours.items())


def test_what_our_backbone_lacks_is_written_as_the_same_function():
    model = _model(init_values=None, proj_bias=False)  # no LayerScale, no attention-output bias
    theirs = to_transformers_state_dict(model.state_dict(), spec_from_backbone(model))
    assert torch.equal(theirs["encoder.layer.0.layer_scale1.lambda1"], torch.ones(384))
    assert torch.equal(theirs["encoder.layer.0.attention.output.dense.bias"], torch.zeros(384))


def test_a_task_models_prefix_is_dropped_and_its_head_refused():
    model = _model()
    theirs = to_transformers_state_dict(model.state_dict(), spec_from_backbone(model))
    prefixed = {f"dinov2.{key}": value for key, value in theirs.items()}
    assert from_transformers_state_dict(prefixed).keys() == model.state_dict().keys()
    with pytest.raises(
        ExportFormatError, match=r"m.safetensors: a task model with head weights \['classifier.weight'\]"
    ):
        from_transformers_state_dict({**prefixed, "classifier.weight": torch.zeros(2, 768)}, origin="m.safetensors")
    with pytest.raises(ExportFormatError, match="unexpected key 'encoder.layer.0.extra.weight'"):
        from_transformers_state_dict({**theirs, "encoder.layer.0.extra.weight": torch.zeros(1)})


def test_configs_name_the_architecture_and_the_training_preprocessing():
    model = _model(num_register_tokens=4)
    spec = spec_from_backbone(model, train_img_size=224, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    config = transformers_config(spec)
    assert config["model_type"] == "dinov2_with_registers" and config["num_register_tokens"] == 4
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (384, 2, 6)
    assert config["mlp_ratio"] == 4 and isinstance(config["mlp_ratio"], int)
    assert config["dinolite_backbone"]["embed_dim"] == 384  # the exact record travels along
    preprocessing = preprocessor_config(spec)
    assert preprocessing["size"] == {"shortest_edge": 256} and preprocessing["crop_size"]["height"] == 224
    assert preprocessing["image_mean"] == [0.5, 0.4, 0.3] and preprocessing["resample"] == 3
