"""Pre-norm transformer block with LayerScale (Touvron et al., 2021, "Going deeper with Image
Transformers") and stochastic depth, in DINOv2's layout:

``x = x + ls1(attn(norm1(x)))``; ``x = x + ls2(mlp(norm2(x)))``, where ``ls(y) = gamma * y``.

Keys: ``norm1.*``, ``attn.qkv.*``, ``attn.proj.*``, ``ls1.gamma``, ``norm2.*``, ``mlp.*``, ``ls2.gamma``
(no ``ls*.gamma`` when LayerScale is off, as DINOv2 then uses ``nn.Identity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from dinolite.models.attention import Attention, AttentionBackend, PositionSignal
from dinolite.models.crop_packing import packed_block_forward
from dinolite.models.ffn import FFN_LAYERS
from dinolite.models.rope import RotaryAngles
from dinolite.models.stochastic_depth import DropPath, drop_add_residual_stochastic_depth

LayerNorm = partial(nn.LayerNorm, eps=1e-6)
# DINOv3's norm_layer names: DINOv2's eps, and the 1e-5 of DINOv3's released ViTs ("layernormbf16")
NORM_EPS = {"layernorm": 1e-6, "layernormbf16": 1e-5}

# DINOv2's threshold: below it, the batch-subset trick costs more (gather/scatter) than it saves.
SUBSET_DROP_THRESHOLD = 0.1


def check_subset_position(position: PositionSignal, drop_path_rate: float) -> None:
    """Refuse per-image rotary angles where stochastic depth computes a branch on a subset of the batch."""
    if isinstance(position, RotaryAngles) and position.sin.ndim == 4:
        raise ValueError(
            "per-image rotary angles (pos_embed=rope with keep_indices) cannot follow the batch subset of "
            f"stochastic depth at drop_path_rate={drop_path_rate} > {SUBSET_DROP_THRESHOLD}"
        )


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` initialised to ``init_values`` (key ``gamma``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """One transformer block. ``forward`` takes a tensor, or a list of tensors (crops of different
    sizes) that are processed one by one inside a single module call, so a sharding wrapper gathers
    the block's parameters once for all crops."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float | None = None,
        ffn_layer: str = "mlp",
        attention_backend: AttentionBackend | None = None,
        norm_eps: float = 1e-6,
        mask_k_bias: bool = False,
    ) -> None:
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"ffn_layer={ffn_layer!r} is not one of {', '.join(FFN_LAYERS)}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, backend=attention_backend, mask_k_bias=mask_k_bias
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.sample_drop_ratio = drop_path
        self.crop_packing = False  # list inputs: tokens packed through one call per layer (models/crop_packing.py)

    def attn_residual(self, x: Tensor, bias: PositionSignal = None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), bias))

    def ffn_residual(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def _forward_one(self, x: Tensor, bias: PositionSignal = None) -> Tensor:
        if self.training and self.sample_drop_ratio > SUBSET_DROP_THRESHOLD:
            check_subset_position(bias, self.sample_drop_ratio)
            attn_residual = partial(self.attn_residual, bias=bias)  # the bias is per token pair, not per sample
            x = drop_add_residual_stochastic_depth(x, attn_residual, self.sample_drop_ratio)
            return drop_add_residual_stochastic_depth(x, self.ffn_residual, self.sample_drop_ratio)
        x = x + self.drop_path1(self.attn_residual(x, bias))
        return x + self.drop_path2(self.ffn_residual(x))

    def forward(
        self, x: Tensor | list[Tensor], bias: PositionSignal | Sequence[PositionSignal] = None
    ) -> Tensor | list[Tensor]:
        """``bias``: the attention-logit bias ``(heads, T, T)`` (a shared relative position bias) or the rotary
        angles (RoPE), one per tensor when ``x`` is a list."""
        if isinstance(x, (list, tuple)):
            biases = bias if isinstance(bias, (list, tuple)) else [bias] * len(x)
            if self.crop_packing and len(x) > 1:
                return packed_block_forward(self, x, biases)
            return [self._forward_one(t, b) for t, b in zip(x, biases)]
        return self._forward_one(x, bias)
