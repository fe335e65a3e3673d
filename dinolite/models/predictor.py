"""I-JEPA's narrow predictor: a small ViT that predicts target-block representations from the context.

Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture", Sec. 3 ("Prediction") and Appendix A: the context encoder's output tokens are projected
to the predictor's own width (``predictor_embed_dim``, 384 in the paper), each gets the position
embedding of its patch; for each target block, one learnable ``mask_token`` per target patch, plus the
position embedding of that patch, is appended; the transformer (its own ``depth``, 6 for ViT-B in the
reference, 12 for ViT-H) runs over ``context + mask tokens``, and the outputs at the mask tokens are
normalised and projected back to the encoder width. Blocks are processed for all ``M`` target blocks at
once by repeating the context ``M`` times along the batch (as the reference does), so a block never
sees another block's queries.

Position embeddings are the fixed 2-D sine-cosine table of MAE / I-JEPA (not learned, not in the state
dict: computed from the grid on each call). Linear layers are initialised truncated-normal (std 0.02)
and each block's output projections are divided by ``sqrt(2 * layer)`` (the reference constructor's
rescaling, which its training script undoes by redrawing every Linear: docs/faithfulness.md, "I-JEPA").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dinolite.models.block import Block, LayerNorm
from dinolite.models.pos_embed import sincos_pos_embed_2d
from dinolite.models.stochastic_depth import drop_path_rates


def gather_rows(table: Tensor, indices: Tensor) -> Tensor:
    """``table (N, D)`` indexed by ``indices (...)`` -> ``(..., D)``."""
    return table[indices.reshape(-1)].reshape(*indices.shape, table.shape[-1])


class IJEPAPredictor(nn.Module):
    """``forward(context_tokens (B, Nc, D), context_idx (B, Nc), target_idx (B, M, Nt)) -> (B, M, Nt, D)``.

    ``grid``: the patch grid (h, w) of the images the indices refer to; ``embed_dim``: the encoder width D.
    """

    def __init__(
        self,
        grid: tuple[int, int] | int,
        embed_dim: int,
        predictor_embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        sincos_order: str = "row_first",
        residual_rescale: bool = True,
    ) -> None:
        super().__init__()
        # divide the residual output projections by sqrt(2 * layer) at init; the released init_model redraws every
        # Linear at std 0.02 afterwards (ijepa 52c1ae9 src/helper.py:86-99), so released training starts without it
        self.residual_rescale = residual_rescale
        self.sincos_order = sincos_order  # the encoder's (I-JEPA's release: column_first, pos_embed.py)
        self.grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        if depth < 1 or predictor_embed_dim % num_heads:
            raise ValueError(
                f"predictor: depth={depth} must be >= 1 and predictor_embed_dim={predictor_embed_dim} divisible "
                f"by num_heads={num_heads}"
            )
        self.embed_dim, self.predictor_embed_dim = embed_dim, predictor_embed_dim
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        rates = drop_path_rates(drop_path_rate, depth, uniform=False)  # plain Python: meta-device builds
        self.blocks = nn.ModuleList(Block(predictor_embed_dim, num_heads, mlp_ratio, drop_path=r) for r in rates)
        self.norm = LayerNorm(predictor_embed_dim)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()
            if not self.residual_rescale:
                return
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

    def position_table(self) -> Tensor:
        """The fixed ``(h * w, predictor_embed_dim)`` sine-cosine table of the context and target positions."""
        return sincos_pos_embed_2d(self.predictor_embed_dim, *self.grid, self.sincos_order)

    def forward(self, context_tokens: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        B, Nc, D = context_tokens.shape
        if context_idx.shape != (B, Nc) or target_idx.ndim != 3 or target_idx.shape[0] != B or D != self.embed_dim:
            raise ValueError(
                f"predictor: context_tokens (B, Nc, {self.embed_dim}), context_idx (B, Nc), target_idx (B, M, Nt) "
                f"expected, got {tuple(context_tokens.shape)}, {tuple(context_idx.shape)}, {tuple(target_idx.shape)}"
            )
        M, Nt = target_idx.shape[1:]
        pos = self.position_table().to(context_tokens.device)
        x = self.predictor_embed(context_tokens)
        x = x + gather_rows(pos, context_idx).to(x.dtype)
        x = x.unsqueeze(1).expand(B, M, Nc, -1).reshape(B * M, Nc, -1)
        queries = self.mask_token.to(x.dtype) + gather_rows(pos, target_idx).to(x.dtype).reshape(B * M, Nt, -1)
        tokens = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        out = self.predictor_proj(self.norm(tokens[:, Nc:]))
        return out.reshape(B, M, Nt, self.embed_dim)
