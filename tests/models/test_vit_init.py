"""The backbone's initialisation schemes (dinolite.models.vit_init): DINOv2's, the I-JEPA encoder
constructor's and released I-JEPA training's, with and without a CLS token."""

from __future__ import annotations

import math

import pytest
import torch

from dinolite.models.pos_embed import sincos_pos_embed_2d
from dinolite.models.vision_transformer import DinoVisionTransformer
from dinolite.models.vit_init import fixed_position_table, init_vit_weights


def _vit(**kwargs) -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, **kwargs).eval()


def test_dinov2_initialisation():
    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=224, patch_size=16, embed_dim=192, depth=2, num_heads=3, init_values=1e-5, num_register_tokens=4
    )
    assert abs(model.pos_embed.std().item() - 0.02) < 0.002
    assert model.cls_token.abs().max().item() < 1e-5
    assert model.register_tokens.abs().max().item() < 1e-5 and model.register_tokens.abs().max().item() > 0
    assert torch.count_nonzero(model.mask_token) == 0
    qkv = model.blocks[0].attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002 and torch.count_nonzero(qkv.bias) == 0
    assert torch.equal(model.blocks[1].ls2.gamma, torch.full((192,), 1e-5))
    assert model.blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6


@pytest.mark.parametrize("ffn_layer", ["mlp", "swiglu"])
def test_ijepa_weight_init_is_the_released_encoders(ffn_layer):
    """Patch projection N(0, 0.02) truncated with zero bias; residual projections of block l (from 1)
    are DINOv2's draw divided by sqrt(2 l); everything else is DINOv2's initialisation, draw for draw."""
    torch.manual_seed(0)
    dinov2 = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, ffn_layer=ffn_layer)
    torch.manual_seed(0)
    ijepa = DinoVisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, ffn_layer=ffn_layer, weight_init="ijepa"
    )
    out = "fc2" if ffn_layer == "mlp" else "w3"
    reference, ours = dinov2.state_dict(), ijepa.state_dict()
    for name, value in ours.items():
        if name.startswith("patch_embed.proj."):
            continue
        layer = int(name.split(".")[1]) + 1 if name.startswith("blocks.") else None
        if name.endswith(("attn.proj.weight", f"mlp.{out}.weight")):
            torch.testing.assert_close(value, reference[name] / math.sqrt(2.0 * layer), rtol=0, atol=0)
        else:
            assert torch.equal(value, reference[name]), name
    weight = ours["patch_embed.proj.weight"]
    assert torch.equal(ours["patch_embed.proj.bias"], torch.zeros(48))
    # trunc_normal_'s bounds are absolute (+-2), as in the reference: at std 0.02 it is N(0, 0.02)
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert dinov2.patch_embed.proj.weight.std() > 2 * weight.std()  # PyTorch's default is ~4x wider here
    with pytest.raises(ValueError, match="weight_init='jax'"):
        DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, weight_init="jax")


def test_ijepa_released_init_is_ijepa_without_the_residual_rescaling():
    """weight_init=ijepa_released: released I-JEPA training's start (init_model redraws the rescaled projections)."""
    rescaled, released = _vit(weight_init="ijepa").state_dict(), _vit(weight_init="ijepa_released").state_dict()
    for key, value in released.items():
        rescaled_key = key.endswith(("attn.proj.weight", "mlp.fc2.weight"))
        layer = int(key.split(".")[1]) + 1 if rescaled_key else None
        expected = value / (2.0 * layer) ** 0.5 if layer else value
        torch.testing.assert_close(rescaled[key], expected, rtol=1e-6, atol=0, msg=key)


def test_cls_free_encoder_draws_like_the_cls_encoder_without_the_cls_token():
    """cls_token=False skips the CLS draw only: the sine-cosine table is the same without its zero CLS row and
    every other tensor is drawn alike (one normal_ draw of D values fewer before the rest)."""
    with_cls, without = _vit(pos_embed_type="sincos"), _vit(pos_embed_type="sincos", cls_token=False)
    assert "cls_token" not in without.state_dict() and without.cls_token is None
    assert torch.equal(without.pos_embed[0], with_cls.pos_embed[0, 1:])
    assert torch.equal(with_cls.pos_embed[0, 0], torch.zeros(48))
    assert torch.equal(fixed_position_table(without)[0], sincos_pos_embed_2d(48, 4, 4))
    learned = _vit(cls_token=False)
    assert learned.pos_embed.shape == (1, 16, 48) and abs(learned.pos_embed.std().item() - 0.02) < 0.004
    again = _vit(cls_token=False)
    torch.manual_seed(1)
    init_vit_weights(again)
    assert not torch.equal(again.blocks[0].attn.qkv.weight, learned.blocks[0].attn.qkv.weight)
    assert torch.count_nonzero(again.mask_token) == 0


def test_mask_token_init_trunc_normal_is_simmims_draw() -> None:
    """``mask_token_init="trunc_normal"``: std 0.02 cut at +-0.02 (SimMIM models/simmim.py:63-67); the default
    keeps DINOv2's zero token and every other draw unchanged."""
    from dinolite.models.vision_transformer import DinoVisionTransformer

    def build(mask_token_init: str) -> DinoVisionTransformer:
        torch.manual_seed(0)
        return DinoVisionTransformer(
            img_size=32, patch_size=4, embed_dim=256, depth=1, num_heads=4, mask_token_init=mask_token_init
        )

    zeros, drawn = build("zeros"), build("trunc_normal")
    assert torch.count_nonzero(zeros.mask_token) == 0
    token = drawn.mask_token.detach()
    assert float(token.abs().max()) <= 0.02 and float(token.abs().max()) > 0.015
    assert 0.007 < float(token.std()) < 0.015  # truncated at one std: an effective std of 0.0108
    with pytest.raises(ValueError, match="mask_token_init='ones' is not one of zeros, trunc_normal"):
        build("ones")


def test_mae_initialisation_is_the_released_mae_encoders():
    """Xavier-uniform Linear and patch weights (the patch convolution as a (D, 3 p^2) matrix), zero Linear
    biases, the CLS token normal std 0.02 (facebookresearch/mae models_mae.py initialize_weights)."""
    model = _vit(weight_init="mae", pos_embed_type="sincos", sincos_order="column_first")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = math.sqrt(6 / (module.in_features + module.out_features))
            assert 0.8 * bound < float(module.weight.detach().abs().max()) <= bound, name
            assert torch.count_nonzero(module.bias) == 0, name
    patch = model.patch_embed.proj.weight.detach()
    bound = math.sqrt(6 / (patch.shape[0] + patch[0].numel()))
    assert 0.8 * bound < float(patch.abs().max()) <= bound
    assert 0.01 < float(model.cls_token.detach().std()) < 0.03
    assert torch.equal(model.pos_embed.detach(), fixed_position_table(model))
    dinov2 = _vit()
    assert (
        float(dinov2.blocks[0].mlp.fc1.weight.detach().std())
        < 0.03
        < float(model.blocks[0].mlp.fc1.weight.detach().std())
    )
