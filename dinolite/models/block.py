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

from dinolite.models.attention import Attention, AttentionBackend
from dinolite.models.crop_packing import packed_block_forward
from dinolite.models.ffn import FFN_LAYERS
from dinolite.models.stochastic_depth import DropPath, drop_add_residual_stochastic_depth

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

# DINOv2's threshold: below it, the batch-subset trick costs more (gather/scatter) than it saves.
SUBSET_DROP_THRESHOLD = 0.1


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
    ) -> None:
        super().__init__()
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"ffn_layer={ffn_layer!r} is not one of {', '.join(FFN_LAYERS)}")
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, backend=attention_backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)
        self.sample_drop_ratio = drop_path
        self.crop_packing = False  # list inputs: tokens packed through one call per layer (models/crop_packing.py)

    def attn_residual(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), bias))

    def ffn_residual(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def _forward_one(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.training and self.sample_drop_ratio > SUBSET_DROP_THRESHOLD:
            attn_residual = partial(self.attn_residual, bias=bias)  # the bias is per token pair, not per sample
            x = drop_add_residual_stochastic_depth(x, attn_residual, self.sample_drop_ratio)
            return drop_add_residual_stochastic_depth(x, self.ffn_residual, self.sample_drop_ratio)
        x = x + self.drop_path1(self.attn_residual(x, bias))
        return x + self.drop_path2(self.ffn_residual(x))

    def forward(
        self, x: Tensor | list[Tensor], bias: Tensor | None | Sequence[Tensor | None] = None
    ) -> Tensor | list[Tensor]:
        """``bias``: the attention-logit bias ``(heads, T, T)`` (a shared relative position bias), one per
        tensor when ``x`` is a list."""
        if isinstance(x, (list, tuple)):
            biases = bias if isinstance(bias, (list, tuple)) else [bias] * len(x)
            if self.crop_packing and len(x) > 1:
                return packed_block_forward(self, x, biases)
            return [self._forward_one(t, b) for t, b in zip(x, biases)]
        return self._forward_one(x, bias)
