"""Feed-forward layers of a transformer block, in DINOv2's parameter layout.

``Mlp``: ``fc2(GELU(fc1(x)))``. ``SwiGLUFFN`` (Shazeer, 2020, "GLU Variants Improve Transformer"):
``w3(SiLU(x W1) * (x W2))`` with ``W1`` and ``W2`` stored as one ``w12`` matrix (DINOv2's
``SwiGLUFFNFused`` layout), hidden size shrunk by 2/3 so the parameter count matches the MLP.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def swiglu_hidden_dim(hidden_features: int) -> int:
    """DINOv2's SwiGLU width for an MLP of ``hidden_features``: ``(int(hidden * 2/3) + 7) // 8 * 8``.

    The 2/3 keeps the parameter count of a 2-matrix MLP; rounding up to a multiple of 8 keeps the
    matrix shapes friendly to tensor cores. ViT-g: 1536 * 4 = 6144 -> 4096.
    """
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class Mlp(nn.Module):
    """Keys ``fc1.{weight,bias}``, ``fc2.{weight,bias}``."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    @property
    def output_projection(self) -> nn.Linear:
        """The layer writing into the residual stream (rescaled by depth-scaled initialisations)."""
        return self.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """Keys ``w12.{weight,bias}`` (``(2 * hidden, in)``) and ``w3.{weight,bias}``.

    ``hidden_features`` is the MLP width (``embed_dim * mlp_ratio``); the layer itself is
    :func:`swiglu_hidden_dim` wide.
    """

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_features)
        self.hidden_features = hidden
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    @property
    def output_projection(self) -> nn.Linear:
        """The layer writing into the residual stream (rescaled by depth-scaled initialisations)."""
        return self.w3

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


FFN_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "swiglu": SwiGLUFFN, "swiglufused": SwiGLUFFN}
