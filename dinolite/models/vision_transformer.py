"""DINOv2's Vision Transformer backbone (Oquab et al., 2023, "DINOv2: Learning Robust Visual Features
without Supervision"; ViT: Dosovitskiy et al., 2021; registers: Darcet et al., 2024, "Vision
Transformers Need Registers").

Token sequence: ``[CLS, registers..., patches...]``. Position embeddings cover CLS and the patches of the
trained ``img_size`` grid only; registers are inserted right after CLS *after* the position embedding is
added, so they carry none. ``cls_token=False`` (the released I-JEPA encoder's layout) drops the CLS token:
the sequence is ``[registers..., patches...]``, the table ``(1, N, D)``, and the pooled feature
``x_norm_clstoken`` is the mean of the final-norm patch tokens (what I-JEPA evaluates; ``avgpool``).
Where a boolean mask is given, the learnable ``mask_token`` replaces the patch embedding before the
position embedding is added (iBOT's masked image modelling). ``pos_embed_type="shared_rel_pos_bias"`` (SimMIM's
ViT) adds no absolute position (``pos_embed`` stays, zero and frozen) and a bias shared by all blocks to the
attention logits instead (:mod:`dinolite.models.rel_pos_bias`, key ``rel_pos_bias.relative_position_bias_table``).
``pos_embed_type="rope"`` (DINOv3's ViT) adds no absolute position either: every block rotates the patch tokens'
queries and keys (:mod:`dinolite.models.rope`, key ``rope_embed.periods``; CLS and registers, DINOv3's storage
tokens, are not rotated). In both cases ``pos_embed`` is a zero, frozen table that only records the trained grid.

With a CLS token, the state dict has exactly the keys and shapes of DINOv2's released backbones
(``cls_token (1,1,D)``, ``pos_embed (1,1+N,D)``, ``register_tokens (1,R,D)``, ``mask_token (1,D)``,
``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``), so those checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from dinolite.models.attention import AttentionBackend, PositionSignal
from dinolite.models.block import Block
from dinolite.models.patch_embed import PatchEmbed
from dinolite.models.pos_embed import SINCOS_ORDERS, interpolate_pos_embed
from dinolite.models.rel_pos_bias import shared_bias_for
from dinolite.models.rope import RopePositionEmbedding
from dinolite.models.stochastic_depth import drop_path_rates
from dinolite.models.vit_init import MASK_TOKEN_INITS, WEIGHT_INITS, init_vit_weights

POS_EMBED_TYPES = ("learned", "sincos", "shared_rel_pos_bias", "rope")


class DinoVisionTransformer(nn.Module):
    """ViT backbone with DINOv2's interface: ``forward_features`` returns DINOv2's dict."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        ffn_layer: str = "mlp",
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        attention: str = "auto",
        pos_embed_type: str = "learned",
        weight_init: str = "dinov2",
        sincos_order: str = "row_first",
        cls_token: bool = True,
        mask_token_init: str = "zeros",
        rope: Mapping[str, Any] | None = None,
        layernorm_eps: float = 1e-6,
        mask_k_bias: bool = False,
        crop_packing: bool = False,
    ) -> None:
        """``mask_k_bias``: the keys' ``qkv`` bias is not applied (DINOv3's option, :class:`Attention`). ``layernorm_eps``: every LayerNorm's (DINOv2's 1e-6; DINOv3's released ViTs 1e-5). ``rope``: keyword arguments of :class:`RopePositionEmbedding` for ``pos_embed_type="rope"`` (``base``,
        ``min_period``, ``max_period``, ``normalize_coords``, ``shift_coords``, ``jitter_coords``, ``rescale_coords``)."""
        super().__init__()
        if pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type={pos_embed_type!r} is not one of {', '.join(POS_EMBED_TYPES)}")
        if sincos_order not in SINCOS_ORDERS:
            raise ValueError(f"sincos_order={sincos_order!r} is not one of {', '.join(SINCOS_ORDERS)}")
        if mask_token_init not in MASK_TOKEN_INITS:
            raise ValueError(f"mask_token_init={mask_token_init!r} is not one of {', '.join(MASK_TOKEN_INITS)}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init={weight_init!r} is not one of {', '.join(WEIGHT_INITS)}")
        if depth < 1 or embed_dim < 1 or num_heads < 1:
            raise ValueError(f"depth={depth}, embed_dim={embed_dim}, num_heads={num_heads} must all be >= 1")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens={num_register_tokens} must be >= 0")
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.n_blocks = depth
        self.num_register_tokens = num_register_tokens
        self.num_cls_tokens = int(cls_token)  # 0: no CLS token (tokens [registers..., patches...])
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.pos_embed_type = pos_embed_type
        self.sincos_order = sincos_order
        self.weight_init = weight_init
        self.mask_token_init = mask_token_init
        self.attention_backend = AttentionBackend(attention)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        # "sincos" (or "shared_rel_pos_bias": zeros): the table stays a parameter (the state dict keeps DINOv2's
        # keys, exports carry the values) but is frozen, so the optimizer leaves it out and the EMA copy never moves.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_cls_tokens + num_patches, embed_dim), requires_grad=pos_embed_type == "learned"
        )
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.rel_pos_bias = shared_bias_for(
            pos_embed_type, self.patch_embed.grid_size, num_heads, cls_token, num_register_tokens
        )
        self.rope_embed = (
            RopePositionEmbedding(embed_dim, num_heads, **(rope or {})) if pos_embed_type == "rope" else None
        )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=rate,
                init_values=init_values,
                ffn_layer=ffn_layer,
                attention_backend=self.attention_backend,
                norm_eps=layernorm_eps,
                mask_k_bias=mask_k_bias,
            )
            for rate in drop_path_rates(drop_path_rate, depth, drop_path_uniform)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)
        self.set_crop_packing(crop_packing)
        self.init_weights()

    def set_crop_packing(self, enabled: bool) -> None:
        """Pack the tokens of all crops through each block's layers in :meth:`forward_features_list`
        (:mod:`dinolite.models.crop_packing`); no parameter or state changes."""
        self.crop_packing = bool(enabled)
        for block in self.blocks:
            block.crop_packing = self.crop_packing

    # ----------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Initialise by ``weight_init`` (:mod:`dinolite.models.vit_init`: DINOv2's, or the I-JEPA encoder's
        two); also re-initialises a model materialised from the meta device."""
        init_vit_weights(self)

    # ----------------------------------------------------------------------------------------------
    def prepare_tokens_with_masks(
        self, x: Tensor, masks: Tensor | None = None, keep_indices: Tensor | None = None
    ) -> Tensor:
        """Images ``(B, C, H, W)`` -> tokens ``(B, C + R + N, D)`` (``C`` = :attr:`num_cls_tokens`, 1 or 0);
        ``masks (B, N)`` bool picks the patches replaced by ``mask_token``. ``keep_indices (B, K)`` long
        (row-major patch indices) keeps only those patch tokens, after the position embedding is added:
        ``(B, C + R + K, D)`` (I-JEPA's context encoder, MSN's patch dropping: the blocks then never see the
        dropped patches)."""
        B, _, H, W = x.shape
        tokens = self.patch_embed(x)
        if masks is not None:
            if masks.dtype != torch.bool:
                raise ValueError(f"masks must be a bool tensor (True = masked patch), got dtype {masks.dtype}")
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks of shape {tuple(masks.shape)} do not match the {tuple(tokens.shape[:2])} "
                    f"(batch, patches) of images {H}x{W} with patch_size={self.patch_size}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        if self.cls_token is not None:
            tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        if self.rope_embed is None:  # RoPE: no absolute position (the table is zero)
            tokens = tokens + self.interpolate_pos_encoding(tokens, H, W)
        c = self.num_cls_tokens
        if keep_indices is not None:
            tokens = torch.cat((tokens[:, :c], self._keep_patches(tokens[:, c:], keep_indices)), dim=1)
        if self.register_tokens is not None:
            tokens = torch.cat((tokens[:, :c], self.register_tokens.expand(B, -1, -1), tokens[:, c:]), dim=1)
        return tokens

    @staticmethod
    def _keep_patches(patches: Tensor, keep_indices: Tensor) -> Tensor:
        """``patches (B, N, D)`` -> ``(B, K, D)``: row ``b`` keeps ``patches[b, keep_indices[b]]``."""
        B, N, D = patches.shape
        if keep_indices.dtype != torch.long or keep_indices.ndim != 2 or keep_indices.shape[0] != B:
            raise ValueError(
                f"keep_indices must be a long tensor of shape ({B}, K), got {keep_indices.dtype} "
                f"{tuple(keep_indices.shape)}"
            )
        if keep_indices.numel() and not (0 <= int(keep_indices.min()) and int(keep_indices.max()) < N):
            raise ValueError(
                f"keep_indices must lie in [0, {N}) (the image's patches), got "
                f"[{int(keep_indices.min())}, {int(keep_indices.max())}]"
            )
        return torch.gather(patches, 1, keep_indices.unsqueeze(-1).expand(-1, -1, D))

    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embeddings for an image of ``height x width`` pixels, in ``x``'s dtype."""
        grid = (height // self.patch_size, width // self.patch_size)
        pos = interpolate_pos_embed(self.pos_embed, grid, self.interpolate_offset, self.interpolate_antialias)
        return pos.to(x.dtype)

    def position_bias(self, x: Tensor, keep_indices: Tensor | None = None) -> PositionSignal:
        """The shared relative position bias ``(heads, T, T)`` for images ``x``, RoPE's angles (of the kept patches
        with ``keep_indices``), or None without either."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.rope_embed is not None:
            angles = self.rope_embed(grid)
            return angles if keep_indices is None else angles.keep(keep_indices)
        if self.rel_pos_bias is None:
            return None
        if keep_indices is not None:
            raise ValueError("pos_embed_type='shared_rel_pos_bias' does not encode a subset of patches (keep_indices)")
        return self.rel_pos_bias(grid)

    def block_positions(self, x: Tensor, keep_indices: Tensor | None = None) -> Iterator[PositionSignal]:
        """One :meth:`position_bias` per block: computed once, or drawn anew for every block while RoPE augments
        its coordinates (training mode), as DINOv3's backbone does."""
        position = self.position_bias(x, keep_indices)
        for index in range(self.n_blocks):
            if index and self.rope_embed is not None and self.rope_embed.augments:
                position = self.position_bias(x, keep_indices)
            yield position

    def _output_dict(
        self, x_prenorm: Tensor, masks: Tensor | None, keep_indices: Tensor | None = None
    ) -> dict[str, Any]:
        x_norm = self.norm(x_prenorm)
        c, r = self.num_cls_tokens, self.num_register_tokens
        patches = x_norm[:, c + r :]
        out = {
            "x_norm_clstoken": self.pooled_feature(x_norm[:, 0], patches),
            "x_norm_regtokens": x_norm[:, c : c + r],
            "x_norm_patchtokens": patches,
            "x_prenorm": x_prenorm,
            "masks": masks,
        }
        if keep_indices is not None:
            out["keep_indices"] = keep_indices
        return out

    def pooled_feature(self, cls: Tensor, patches: Tensor) -> Tensor:
        """The image feature ``(B, D)`` (``x_norm_clstoken``): the CLS token ``cls``, or without one the mean
        of ``patches (B, N, D)`` (``cls`` is then the first register or patch and is ignored)."""
        return cls if self.num_cls_tokens else patches.mean(dim=1)

    def forward_features(
        self, x: Tensor, masks: Tensor | None = None, keep_indices: Tensor | None = None
    ) -> dict[str, Any]:
        """DINOv2's feature dict: ``x_norm_clstoken (B,D)``, ``x_norm_regtokens (B,R,D)``,
        ``x_norm_patchtokens (B,N,D)``, ``x_prenorm (B,C+R+N,D)``, ``masks``. Without a CLS token
        ``x_norm_clstoken`` is the mean of ``x_norm_patchtokens`` (:meth:`pooled_feature`). With ``keep_indices (B,K)``
        only those patches are encoded (``N`` becomes ``K`` above; the dict also holds ``keep_indices``)."""
        tokens = self.prepare_tokens_with_masks(x, masks, keep_indices)
        for block, bias in zip(self.blocks, self.block_positions(x, keep_indices)):
            tokens = block(tokens, bias)
        return self._output_dict(tokens, masks, keep_indices)

    def forward_features_list(
        self,
        x_list: Sequence[Tensor],
        masks_list: Sequence[Tensor | None] | None = None,
        keep_indices_list: Sequence[Tensor | None] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`forward_features` for several batches of different image sizes (global and local
        crops) in one pass over the blocks; ``masks_list`` / ``keep_indices_list`` entries may be None."""
        if masks_list is None:
            masks_list = [None] * len(x_list)
        if keep_indices_list is None:
            keep_indices_list = [None] * len(x_list)
        if len(masks_list) != len(x_list) or len(keep_indices_list) != len(x_list):
            raise ValueError(
                f"got {len(x_list)} image batches but {len(masks_list)} masks and {len(keep_indices_list)} keep_indices"
            )
        tokens = [self.prepare_tokens_with_masks(x, m, k) for x, m, k in zip(x_list, masks_list, keep_indices_list)]
        # per block, every crop's position in turn (the draw order of DINOv3's list forward)
        positions = zip(*(self.block_positions(x, k) for x, k in zip(x_list, keep_indices_list)))
        for block, biases in zip(self.blocks, positions):
            tokens = block(tokens, list(biases))
        return [self._output_dict(t, m, k) for t, m, k in zip(tokens, masks_list, keep_indices_list)]

    def forward(self, x: Tensor, masks: Tensor | None = None, *, is_training: bool = False) -> Tensor | dict:
        """The pooled feature ``x_norm_clstoken`` ``(B, D)``; the full dict when ``is_training``."""
        features = self.forward_features(x, masks)
        return features if is_training else features["x_norm_clstoken"]

    # ----------------------------------------------------------------------------------------------
    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` blocks (or of the block indices in ``n``), as in DINOv2.

        Each output is the patch tokens ``(B, N, D)`` (``(B, D, h, w)`` when ``reshape``), paired with
        the CLS token ``(B, D)`` when ``return_class_token`` (without a CLS token: the mean of that
        output's patch tokens, :meth:`pooled_feature`); ``norm`` applies the final LayerNorm.
        """
        wanted = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else list(n)
        for index in wanted:
            if not 0 <= index < self.n_blocks:
                raise ValueError(f"block index {index} out of range for a backbone of {self.n_blocks} blocks")
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, (block, bias) in enumerate(zip(self.blocks, self.block_positions(x))):
            tokens = block(tokens, bias)
            if i in wanted:
                outputs.append(tokens)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        patches = [out[:, self.num_cls_tokens + self.num_register_tokens :] for out in outputs]
        class_tokens = [self.pooled_feature(out[:, 0], p) for out, p in zip(outputs, patches)]
        if reshape:
            B, _, H, W = x.shape
            h, w = H // self.patch_size, W // self.patch_size
            patches = [p.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Softmax attention weights ``(B, heads, T, T)`` of the last block (tokens: CLS if any, registers,
        patches: :meth:`prepare_tokens_with_masks`), computed with the explicit formula."""
        tokens, positions = self.prepare_tokens_with_masks(x), list(self.block_positions(x))
        for block, bias in zip(self.blocks[:-1], positions):
            tokens = block(tokens, bias)
        last, bias = self.blocks[-1], positions[-1]
        _, weights = last.attn.forward_explicit(last.norm1(tokens), bias)
        return weights
