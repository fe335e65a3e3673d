"""DINO projection head (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision
Transformers"), used by DINOv2 for both the image-level DINO loss and the patch-level iBOT loss.

``head(x) = W_hat · normalize(mlp(x))`` where ``mlp`` is Linear -> GELU -> ... -> Linear
(in -> hidden -> ... -> bottleneck, ``nlayers`` Linear layers; ``nlayers=1`` is one Linear in ->
bottleneck), ``normalize`` is L2 normalisation, and ``W_hat`` is the prototype matrix ``last_layer.weight``
(``K x bottleneck``, no bias) with each row divided by its L2 norm. This equals DINOv2's
``weight_norm(Linear)`` with the gain ``g`` frozen at 1, but keeps a single plain parameter that FSDP2
can shard. The logits are cosine similarities in [-1, 1]; the losses divide them by a temperature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _l2_eps(dtype: torch.dtype) -> float:
    # 1e-12 underflows in float16; DINOv2 uses 1e-6 there.
    return 1e-6 if dtype == torch.float16 else 1e-12


class NormalizedLinear(nn.Linear):
    """``Linear`` without bias whose weight rows are L2-normalised in every forward (key ``weight``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1, eps=_l2_eps(self.weight.dtype)))


def _build_mlp(nlayers: int, in_dim: int, hidden_dim: int, bottleneck_dim: int) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """Keys: ``mlp.{0,2,4}.{weight,bias}`` (DINOv2's, for ``nlayers=3``) and ``last_layer.weight``."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers={nlayers} must be >= 1")
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.mlp = _build_mlp(nlayers, in_dim, hidden_dim, bottleneck_dim)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Truncated normal (std 0.02) weights and zero biases for every Linear, prototypes included
        (only their direction matters: rows are normalised)."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        z = F.normalize(z, dim=-1, p=2, eps=_l2_eps(z.dtype))
        return self.last_layer(z)


def dinov2_head_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a DINOv2 head state dict (``last_layer.weight_g`` / ``weight_v``) to this layout:
    ``weight = g * v / ||v||`` per row (with ``g`` = 1, DINOv2's frozen value, this is ``v``'s direction)."""
    out = {k: v for k, v in state_dict.items() if not k.startswith("last_layer.weight_")}
    if "last_layer.weight_v" in state_dict:
        v = state_dict["last_layer.weight_v"]
        g = state_dict.get("last_layer.weight_g", torch.ones(v.shape[0], 1, dtype=v.dtype))
        out["last_layer.weight"] = g.reshape(-1, 1) * F.normalize(v, dim=1)
    return out


def build_heads(dino_cfg: Any, ibot_cfg: Any, embed_dim: int) -> dict[str, DINOHead]:
    """``{"dino_head", "ibot_head"}`` from the ``dino`` and ``ibot`` config sections; the same module
    object for both unless ``ibot.separate_head`` (then the iBOT head has its own ``ibot.head_*`` sizes)."""
    dino_head = DINOHead(
        embed_dim,
        dino_cfg.head_n_prototypes,
        hidden_dim=dino_cfg.head_hidden_dim,
        bottleneck_dim=dino_cfg.head_bottleneck_dim,
        nlayers=dino_cfg.head_nlayers,
    )
    if not ibot_cfg.separate_head:
        return {"dino_head": dino_head, "ibot_head": dino_head}
    ibot_head = DINOHead(
        embed_dim,
        ibot_cfg.head_n_prototypes,
        hidden_dim=ibot_cfg.head_hidden_dim,
        bottleneck_dim=ibot_cfg.head_bottleneck_dim,
        nlayers=ibot_cfg.head_nlayers,
    )
    return {"dino_head": dino_head, "ibot_head": ibot_head}
