"""Crop packing: one block's forward over crops of several sizes with their tokens packed together
(the layout of DINOv3's ``forward_list``: Siméoni et al., 2025, "DINOv3").

The tokens of every crop batch ``(B_i, T_i, D)`` are flattened into one ``(sum_i B_i T_i, D)`` matrix, so
the norms, the ``qkv`` / ``proj`` projections, LayerScale and the MLP each run once per block instead of
once per crop size. Only attention needs the crop structure: it runs per group of crops with the same
token count (and the same logit bias), one SDPA call per group. With RoPE each crop's queries and keys are
rotated first by the angles of its own patch grid (the backbone draws them per crop and per block, as the
per-crop forward does, including the training-time coordinate augmentation; prefix tokens stay unrotated), so
the crops of one size then share a group. Every operation outside attention is per token, so the result
equals :meth:`Block.forward` on the crops one by one up to the float rounding of a matrix product of another
shape (the tolerance is stated in tests/models/test_crop_packing.py).

Stochastic depth draws exactly what the per-crop forward draws, in the same order (for each crop: the
attention branch's draw, then the MLP branch's), so a packed training step sees the same dropped samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional as F

from dinolite.models.attention import PositionSignal, position_queries_keys
from dinolite.models.rope import RotaryAngles

if TYPE_CHECKING:  # block.py imports this module: a runtime import here would be circular
    from dinolite.models.block import Block


@dataclass
class BranchDrop:
    """Stochastic depth of one residual branch for one crop batch: ``rows`` (the batch-subset form: the
    samples the branch is computed on, added back scaled by ``alpha``) or ``mask`` (:class:`DropPath`'s
    per-sample keep mask, divided by ``keep``); neither in evaluation or without stochastic depth."""

    rows: Tensor | None = None
    alpha: float = 1.0
    mask: Tensor | None = None
    keep: float = 1.0


def pack(xs: Sequence[Tensor]) -> Tensor:
    """``[(B_i, T_i, D)]`` -> ``(sum_i B_i T_i, D)``."""
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])


def unpack(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Inverse of :func:`pack` for the crop shapes ``(B_i, T_i, D)`` (the last size is ``flat``'s own)."""
    sizes = [shape[0] * shape[1] for shape in shapes]
    return [part.view(shape[0], shape[1], flat.shape[-1]) for part, shape in zip(flat.split(sizes), shapes)]


def _attend(attn: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """Attention of :class:`~dinolite.models.attention.Attention` on ``q, k, v (B, T, heads, d)`` -> ``(B, T, D)``
    before the output projection (the same kernels as ``Attention.forward``)."""
    B, T = q.shape[:2]
    if bias is None and attn.backend.select(q) == "xformers":
        from xformers.ops import memory_efficient_attention  # CUDA-only path, imported on use

        return memory_efficient_attention(q, k, v).reshape(B, T, -1)
    mask = None if bias is None else bias.to(q.dtype).unsqueeze(0)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).reshape(B, T, -1)


def _crop_queries_keys_values(
    attn: torch.nn.Module, qkv: Tensor, position: PositionSignal
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One crop's projected ``qkv (B, T, 3 D)`` -> ``q, k, v (B, T, heads, d)`` with its own rotary angles applied
    (RoPE of its patch grid and coordinate draw), and its logit bias left (or None)."""
    if position is not None and not isinstance(position, (Tensor, RotaryAngles)):
        raise TypeError(
            f"student.crop_packing supports a logit bias tensor, rotary angles or no position signal inside "
            f"attention, not {type(position).__name__}; set student.crop_packing=false"
        )
    B, T, _ = qkv.shape
    q, k, v = qkv.reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 1, 3, 4).unbind(0)
    q, k, bias = position_queries_keys(q, k, position)
    return q, k, v, bias


def _batched(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def grouped_attention(
    attn: torch.nn.Module, qkvs: Sequence[Tensor], positions: Sequence[PositionSignal]
) -> list[Tensor]:
    """Attention per crop batch: each crop's queries and keys rotated by its own angles (RoPE), then one call per
    group of crops with the same token count and logit bias (rotated crops have none: one group per size)."""
    crops = [_crop_queries_keys_values(attn, qkv, position) for qkv, position in zip(qkvs, positions)]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (q, _, _, bias) in enumerate(crops):
        groups.setdefault((q.shape[1], id(bias)), []).append(index)
    outs: list[Tensor | None] = [None] * len(crops)
    for members in groups.values():
        q, k, v = (_batched([crops[i][part] for i in members]) for part in range(3))
        attended = _attend(attn, q, k, v, crops[members[0]][3])
        for index, part in zip(members, attended.split([crops[i][0].shape[0] for i in members])):
            outs[index] = part
    return outs  # type: ignore[return-value]


def _draw_rows(x: Tensor, rate: float) -> BranchDrop:
    batch = x.shape[0]  # drop_add_residual_stochastic_depth's draw
    subset = max(int(batch * (1.0 - rate)), 1)
    return BranchDrop(rows=torch.randperm(batch, device=x.device)[:subset], alpha=batch / subset)


def _draw_mask(x: Tensor, rate: float, dtype: torch.dtype) -> BranchDrop:
    if rate == 0.0:
        return BranchDrop()
    keep = 1.0 - rate  # DropPath's draw
    return BranchDrop(mask=x.new_empty((x.shape[0], 1, 1), dtype=dtype).bernoulli_(keep), keep=keep)


def _add_branch(x: Tensor, residual: Tensor, drop: BranchDrop) -> Tensor:
    """``x`` plus one branch's residual, as the per-crop block adds it."""
    if drop.rows is not None:
        out = torch.index_add(x.flatten(1), 0, drop.rows, residual.flatten(1).to(x.dtype), alpha=drop.alpha)
        return out.view_as(x)
    if drop.mask is not None:
        residual = residual * drop.mask / drop.keep
    return x + residual


def _packed_branch(xs: Sequence[Tensor], drops: Sequence[BranchDrop], branch) -> list[Tensor]:  # noqa: ANN001
    """Each crop's residual of ``branch`` (packed tokens -> packed residual), on the rows each crop keeps."""
    inputs = [x if d.rows is None else x[d.rows] for x, d in zip(xs, drops)]
    return branch(inputs)


def packed_block_forward(block: Block, xs: Sequence[Tensor], biases: Sequence[PositionSignal]) -> list[Tensor]:
    """:meth:`Block.forward` on the crop batches ``xs`` with their tokens packed (module docstring); ``biases``: each
    crop's position signal (a logit bias, RoPE's angles of its own grid, or None)."""
    from dinolite.models.block import SUBSET_DROP_THRESHOLD, check_subset_position  # loaded by now: block.py calls us

    rate = block.sample_drop_ratio
    subset = block.training and rate > SUBSET_DROP_THRESHOLD
    drops: list[tuple[BranchDrop, BranchDrop]] = []
    if subset:
        for position in biases:
            check_subset_position(position, rate)
        drops = [(_draw_rows(x, rate), _draw_rows(x, rate)) for x in xs]

    def attn_branch(inputs: Sequence[Tensor]) -> list[Tensor]:
        shapes = [t.shape for t in inputs]
        qkv = block.attn.project_qkv(block.norm1(pack(inputs)))
        attended = grouped_attention(block.attn, unpack(qkv, [(*s[:2], qkv.shape[-1]) for s in shapes]), biases)
        return unpack(block.ls1(block.attn.proj(pack(attended))), shapes)

    def ffn_branch(inputs: Sequence[Tensor]) -> list[Tensor]:
        return unpack(block.ls2(block.mlp(block.norm2(pack(inputs)))), [t.shape for t in inputs])

    attn_drops = [d[0] for d in drops] if subset else [BranchDrop()] * len(xs)
    residuals = _packed_branch(xs, attn_drops, attn_branch)
    if not subset:
        dp1, dp2 = block.drop_path1, block.drop_path2
        rates = (dp1.drop_prob if dp1.training else 0.0, dp2.drop_prob if dp2.training else 0.0)
        drops = [(_draw_mask(x, rates[0], r.dtype), _draw_mask(x, rates[1], r.dtype)) for x, r in zip(xs, residuals)]
    xs = [_add_branch(x, r, d[0]) for x, r, d in zip(xs, residuals, drops)]
    residuals = _packed_branch(xs, [d[1] for d in drops], ffn_branch)
    return [_add_branch(x, r, d[1]) for x, r, d in zip(xs, residuals, drops)]
