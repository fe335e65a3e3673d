"""The backbone's initialisation schemes (``DinoVisionTransformer(weight_init=...)``).

- ``dinov2``: DINOv2's. ``pos_embed`` truncated normal, std 0.02 (``pos_embed_type="sincos"``: the fixed
  2-D sine-cosine table of MAE / I-JEPA, zeros at the CLS row when there is one; zeros for ``rope``);``cls_token`` and
  ``register_tokens`` normal, std 1e-6; ``mask_token`` zeros; every ``Linear`` truncated normal std 0.02
  weights, zero biases; LayerNorm ones/zeros; LayerScale ``init_values``; the patch convolution PyTorch's
  default.
- ``ijepa``: the I-JEPA encoder constructor's. The patch convolution truncated normal (std 0.02) with a zero
  bias, and each block's residual output projections (``attn.proj``, the FFN's ``fc2`` / ``w3``) divided by
  ``sqrt(2 * layer)`` (layer counted from 1; BEiT's ``fix_init_weight``). Released training then redraws
  every ``Linear`` at std 0.02, undoing the rescaling (docs/faithfulness.md, "I-JEPA").
- ``ijepa_released``: what released I-JEPA training starts from: ``ijepa`` without the rescaling
  (facebookresearch/ijepa 52c1ae9 ``src/helper.py:86-99``). Its patch tokens start smaller than with
  PyTorch's default for small patches (std 0.02 against ``1 / sqrt(3 * fan_in)``: 0.083 for a 4x4 RGB patch,
  0.021 for 16x16), so position outweighs pixel content at the input.
- ``mae``: the released MAE encoder's (facebookresearch/mae ``models_mae.py`` ``initialize_weights``): every
  ``Linear`` Xavier-uniform with zero biases, the patch convolution's weight Xavier-uniform as the
  ``(D, 3 p^2)`` matrix it is (its bias PyTorch's default), ``cls_token`` normal std 0.02; with
  ``pos_embed_type="sincos"`` the fixed table.

Every scheme draws in the same order as DINOv2's, so ``ijepa`` differs from ``dinov2`` only where it says.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dinolite.models.block import LayerScale
from dinolite.models.pos_embed import sincos_pos_embed_2d

if TYPE_CHECKING:  # the backbone imports this module
    from dinolite.models.vision_transformer import DinoVisionTransformer

WEIGHT_INITS = ("dinov2", "ijepa", "ijepa_released", "mae")
MASK_TOKEN_INITS = ("zeros", "trunc_normal")
# SimMIM's mask token: std 0.02 truncated at +-1 std (microsoft/SimMIM d3e29bc models/simmim.py:63-67)
MASK_TOKEN_STD = 0.02


def fixed_position_table(model: DinoVisionTransformer) -> torch.Tensor:
    """The sine-cosine ``pos_embed`` value ``(1, [1 +] N, D)``: a zero row in front when there is a CLS token."""
    side = model.patch_embed.grid_size
    table = sincos_pos_embed_2d(model.embed_dim, side, side, model.sincos_order)
    if model.cls_token is not None:
        table = torch.cat([torch.zeros(1, model.embed_dim), table])
    return table.unsqueeze(0)


@torch.no_grad()
def init_vit_weights(model: DinoVisionTransformer) -> None:
    """Initialise ``model`` in place by its ``weight_init`` (the module docstring)."""
    if model.weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init={model.weight_init!r} is not one of {', '.join(WEIGHT_INITS)}")
    if model.pos_embed_type == "sincos":
        model.pos_embed.copy_(fixed_position_table(model))
    elif model.pos_embed_type == "shared_rel_pos_bias":  # no absolute position: a zero, frozen table
        nn.init.zeros_(model.pos_embed)
        model.rel_pos_bias.reset_parameters()
    elif model.pos_embed_type == "rope":  # likewise; the periods are recomputed (a model built on the meta device)
        nn.init.zeros_(model.pos_embed)
        model.rope_embed.reset_parameters()
    else:
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
    if model.cls_token is not None:
        nn.init.normal_(model.cls_token, std=1e-6)
    if model.register_tokens is not None:
        nn.init.normal_(model.register_tokens, std=1e-6)
    if model.mask_token_init == "trunc_normal":
        nn.init.trunc_normal_(model.mask_token, std=MASK_TOKEN_STD, a=-MASK_TOKEN_STD, b=MASK_TOKEN_STD)
    else:
        nn.init.zeros_(model.mask_token)
    model.patch_embed.proj.reset_parameters()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, LayerScale)):
            module.reset_parameters()
    if model.weight_init in ("ijepa", "ijepa_released"):
        nn.init.trunc_normal_(model.patch_embed.proj.weight, std=0.02)
        nn.init.zeros_(model.patch_embed.proj.bias)
    if model.weight_init == "mae":
        _mae_init(model)
    if model.weight_init == "ijepa":  # ijepa_released: init_model's redraw undoes it (helper.py:86-99)
        for layer, block in enumerate(model.blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.output_projection.weight.div_(math.sqrt(2.0 * layer))


def _mae_init(model: DinoVisionTransformer) -> None:
    """``weight_init="mae"`` over the DINOv2 draws (the module docstring)."""
    weight = model.patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    if model.cls_token is not None:
        nn.init.normal_(model.cls_token, std=0.02)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
