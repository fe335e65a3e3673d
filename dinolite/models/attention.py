"""Multi-head self-attention with DINOv2's parameter layout (``qkv``, ``proj``).

Attention is ``softmax(Q K^T / sqrt(d_head)) V`` (Vaswani et al., 2017). Three implementations compute
it: xformers' ``memory_efficient_attention`` (CUDA only, when installed), PyTorch's
``scaled_dot_product_attention`` (every device), and :func:`explicit_attention`, the plain formula used
for attention maps and as the reference in tests. A position signal reaches attention either as a bias on
the logits (a relative position bias) or as :class:`~dinolite.models.rope.RotaryAngles` that rotate the
patch tokens' queries and keys before the product (RoPE).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dinolite.models.rope import RotaryAngles, apply_rotary

# What a block hands to attention: a logit bias (heads, T, T), rotary angles, or nothing.
PositionSignal = Tensor | RotaryAngles | None

ATTENTION_CHOICES = ("auto", "sdpa", "xformers")


def xformers_available() -> bool:
    """True when the ``xformers`` package can be imported (its kernels still need CUDA tensors)."""
    return importlib.util.find_spec("xformers") is not None


class AttentionBackend:
    """Chooses the attention kernel for one model and remembers whether it already warned.

    ``requested``: ``"auto"`` uses xformers for CUDA tensors when installed and SDPA otherwise;
    ``"sdpa"`` always uses SDPA; ``"xformers"`` uses xformers and falls back to SDPA (warning once per
    model) when it is not installed or the tensors are not on CUDA. One instance is shared by all blocks
    of a backbone, so a model warns once, not once per block.
    """

    def __init__(self, requested: str = "auto") -> None:
        if requested not in ATTENTION_CHOICES:
            raise ValueError(f"attention={requested!r} is not one of {', '.join(ATTENTION_CHOICES)}")
        self.requested = requested
        self._has_xformers = xformers_available() if requested != "sdpa" else False
        self._warned = False

    def select(self, x: Tensor) -> str:
        """``"xformers"`` or ``"sdpa"`` for an input tensor ``x``."""
        if self.requested == "sdpa":
            return "sdpa"
        usable = self._has_xformers and x.is_cuda
        if usable:
            return "xformers"
        if self.requested == "xformers" and not self._warned:
            self._warned = True
            reason = (
                "xformers is not installed (pip install 'dinolite[xformers]')"
                if not self._has_xformers
                else f"tensors are on {x.device.type}"
            )
            warnings.warn(
                f"attention='xformers' was requested but {reason}; falling back to "
                "torch.nn.functional.scaled_dot_product_attention",
                RuntimeWarning,
                stacklevel=3,
            )
        return "sdpa"


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Plain attention on ``(B, heads, T, d)`` tensors: returns ``(softmax(QK^T/sqrt(d) + bias) V, weights)``
    (``bias``: ``(heads, T, T)`` added to the logits, or None).

    Computed in float32 for the softmax (the weights are returned for visualisation).
    """
    scale = q.shape[-1] ** -0.5
    logits = (q.float() * scale) @ k.float().transpose(-2, -1)
    weights = torch.softmax(logits if bias is None else logits + bias.float(), dim=-1)
    return (weights @ v.float()).to(v.dtype), weights


def position_queries_keys(q: Tensor, k: Tensor, position: PositionSignal) -> tuple[Tensor, Tensor, Tensor | None]:
    """Queries and keys ``(B, T, heads, d)`` with rotary angles applied to the patch tokens (RoPE), and the logit
    bias left for attention (None with RoPE or without a position signal). Crop packing calls it per crop."""
    if not isinstance(position, RotaryAngles):
        return q, k, position
    q, k = (apply_rotary(t.transpose(1, 2), position).transpose(1, 2) for t in (q, k))
    return q, k, None


class Attention(nn.Module):
    """Self-attention over ``(B, T, dim)`` tokens; keys ``qkv.{weight,bias}``, ``proj.{weight,bias}``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        backend: AttentionBackend | None = None,
        mask_k_bias: bool = False,
    ) -> None:
        """``mask_k_bias``: the keys' third of the ``qkv`` bias is not applied (DINOv3's ``mask_k_bias``: with RoPE a
        key bias is rotated, so it no longer cancels in the softmax; masked, it stays at its initial zero)."""
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.backend = backend if backend is not None else AttentionBackend("auto")
        self.mask_k_bias = mask_k_bias and qkv_bias

    def project_qkv(self, x: Tensor) -> Tensor:
        """``(..., dim)`` -> ``(..., 3 dim)``: the ``qkv`` projection, without the keys' bias when ``mask_k_bias``."""
        bias = self.qkv.bias
        if self.mask_k_bias:  # no gradient reaches the keys' bias either
            C = x.shape[-1]
            bias = torch.cat((bias[:C], torch.zeros_like(bias[C : 2 * C]), bias[2 * C :]))
        return F.linear(x, self.qkv.weight, bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(B, T, dim)`` -> ``(3, B, T, heads, d_head)`` for q, k, v."""
        B, T, _ = x.shape
        return self.project_qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 1, 3, 4)

    def _queries_keys_values(self, x: Tensor, position: PositionSignal) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(B, T, heads, d)`` q, k, v with rotary angles applied to q and k, and the logit bias left (or None)."""
        q, k, v = self._split_heads(x).unbind(0)
        q, k, bias = position_queries_keys(q, k, position)
        return q, k, v, bias

    def forward(self, x: Tensor, bias: PositionSignal = None) -> Tensor:
        """Attention over ``x``; ``bias (heads, T, T)`` is added to the logits (a relative position bias), or
        :class:`RotaryAngles` rotate the queries and keys of the patch tokens (RoPE)."""
        B, T, C = x.shape
        q, k, v, bias = self._queries_keys_values(x, bias)  # each (B, T, heads, d)
        if bias is None and self.backend.select(x) == "xformers":
            from xformers.ops import memory_efficient_attention  # CUDA-only path, imported on use

            out = memory_efficient_attention(q, k, v)  # (B, T, heads, d) layout
        else:
            # a float attn_mask is added to the logits inside the fused kernel (no (B, heads, T, T) logits kept)
            mask = None if bias is None else bias.to(q.dtype).unsqueeze(0)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            )
            out = out.transpose(1, 2)
        return self.proj(out.reshape(B, T, C))

    def forward_explicit(self, x: Tensor, bias: PositionSignal = None) -> tuple[Tensor, Tensor]:
        """Same output as :meth:`forward` through :func:`explicit_attention`, plus the ``(B, heads, T, T)``
        attention weights."""
        B, T, C = x.shape
        *qkv, bias = self._queries_keys_values(x, bias)
        q, k, v = (t.transpose(1, 2) for t in qkv)
        out, weights = explicit_attention(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(B, T, C)), weights
