"""MAE's light decoder: the encoded visible tokens plus mask tokens, back in image order, to pixels.

He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners", Sec. 3 ("MAE decoder") and the released
``models_mae.py`` (facebookresearch/mae ``forward_decoder``): the encoder's output (CLS token first, then the
``K`` visible patches in the shuffled order the encoder saw them) is projected to the decoder's own width;
one shared learnable ``mask_token`` per removed patch is appended; the ``ids_restore`` permutation puts every
patch token back at its image position; the fixed 2-D sine-cosine table (with a zero row for the CLS token)
is added; ``depth`` transformer blocks and a LayerNorm follow, and a linear head predicts each patch's
``p * p * C`` pixels (:func:`dinolite.losses.mae_loss.patchify`'s layout). The CLS output is dropped.

The table is not learned and not in the state dict (computed from the grid, as I-JEPA's predictor does).
Linear layers start Xavier-uniform with zero biases and the mask token normal with std 0.02 (the release's
``initialize_weights``). The paper's default is 8 blocks of width 512 (16 heads); its ablation (Table 1a, b)
finds a single block enough for fine-tuning but linear probing wants the deeper decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dinolite.models.block import Block, LayerNorm
from dinolite.models.pos_embed import sincos_pos_embed_2d


class MAEDecoder(nn.Module):
    """``forward(latent (B, 1 + K, D), ids_restore (B, N)) -> (B, N, p * p * C)`` pixel predictions.

    ``grid``: the patch grid (h, w) of the images; ``embed_dim``: the encoder width ``D``; ``patch_pixels``:
    ``p * p * C``.
    """

    def __init__(
        self,
        grid: tuple[int, int] | int,
        embed_dim: int,
        patch_pixels: int,
        decoder_embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        sincos_order: str = "column_first",
    ) -> None:
        super().__init__()
        if depth < 1 or decoder_embed_dim % num_heads or patch_pixels < 1:
            raise ValueError(
                f"MAE decoder: depth={depth} must be >= 1, decoder_embed_dim={decoder_embed_dim} divisible by "
                f"num_heads={num_heads}, patch_pixels={patch_pixels} >= 1"
            )
        self.grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
        self.sincos_order = sincos_order
        self.embed_dim, self.decoder_embed_dim = embed_dim, decoder_embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.blocks = nn.ModuleList(Block(decoder_embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = LayerNorm(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, patch_pixels)
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.mask_token, std=0.02)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()

    def position_table(self) -> Tensor:
        """The fixed ``(1 + h * w, decoder_embed_dim)`` table: a zero CLS row, then the patch positions."""
        patches = sincos_pos_embed_2d(self.decoder_embed_dim, *self.grid, self.sincos_order)
        return torch.cat([patches.new_zeros(1, self.decoder_embed_dim), patches])

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        B, T, D = latent.shape
        N = self.grid[0] * self.grid[1]
        if D != self.embed_dim or ids_restore.shape != (B, N) or not 2 <= T <= N + 1:
            raise ValueError(
                f"MAE decoder: latent (B, 1 + K, {self.embed_dim}) with 1 <= K <= {N} and ids_restore (B, {N}) "
                f"expected, got {tuple(latent.shape)} and {tuple(ids_restore.shape)}"
            )
        x = self.decoder_embed(latent)
        masked = self.mask_token.to(x.dtype).expand(B, N + 1 - T, -1)
        shuffled = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.position_table().to(x)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]
