"""Position-embedding resampling that exports to ONNX with a dynamic image size.

The backbone resamples its position embeddings with ``F.interpolate`` and skips the resampling at the
trained grid. Both choices are fixed at export time by tracers (the output size is turned into a
constant and the branch is taken once), so an exported graph only works at the example size. Here the
same bicubic resampling is written as two dense interpolation matrices built from tensor arithmetic
on the grid size, with no Python branch:

    resized = A_h @ grid @ A_w^T,   A (out x in)

Row ``i`` of ``A`` holds the weights that ``F.interpolate(mode="bicubic", align_corners=False)`` gives
to the input positions for output ``i``:

- plain (Keys cubic, a = -0.75): source coordinate ``x = (i + 0.5) * s - 0.5`` with ``s = 1/scale_factor``
  (DINOv2's offset mode) or ``in/out`` (exact-size mode); taps ``floor(x) - 1 .. floor(x) + 2`` clamped
  to the border;
- antialiased (a = -0.5, the PIL filter torch uses): centre ``(i + 0.5) * s``, support ``2 * max(s, 1)``,
  weights ``cubic((j - centre + 0.5) / max(s, 1))`` over the window, renormalised.

At the trained grid the backbone returns the embeddings unchanged (and torch's antialiased kernel copies
any dimension whose size does not change), so ``s`` is forced to 1 there, which makes ``A`` the
identity exactly (cubic weights 0, 1, 0, 0). Checked against ``F.interpolate`` in the tests.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from dinolite.models.pos_embed import pos_embed_layout


def _cubic(x: Tensor, a: float) -> Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def interpolation_matrix(out_positions: Tensor, in_size: int, inv_scale: Tensor, antialias: bool) -> Tensor:
    """``(out, in)`` bicubic weights for output positions ``0..out-1`` (``inv_scale``: 0-d tensor)."""
    positions_out = out_positions.float()
    positions_in = torch.arange(in_size, dtype=torch.float32, device=out_positions.device)
    if antialias:
        support_scale = torch.clamp(inv_scale, min=1.0)
        centre = (positions_out + 0.5) * inv_scale
        support = 2.0 * support_scale
        lo = torch.clamp(torch.floor(centre - support + 0.5), min=0.0)
        hi = torch.clamp(torch.floor(centre + support + 0.5), max=float(in_size))
        j = positions_in[None, :]
        inside = (j >= lo[:, None]) & (j < hi[:, None])
        weights = _cubic((j - centre[:, None] + 0.5) / support_scale, a=-0.5) * inside
        return weights / weights.sum(dim=1, keepdim=True)
    source = (positions_out + 0.5) * inv_scale - 0.5
    floor = torch.floor(source)
    frac = source - floor
    matrix = torch.zeros_like(positions_out)[:, None] * positions_in[None, :]
    for tap in range(4):
        index = torch.clamp(floor - 1 + tap, 0, in_size - 1)
        weight = _cubic(frac - (tap - 1), a=-0.75)
        matrix = matrix + weight[:, None] * (index[:, None] == positions_in[None, :])
    return matrix


def resample_pos_embed(
    pos_embed: Tensor,
    rows: Tensor,
    cols: Tensor,
    offset: float,
    antialias: bool,
    layout: tuple[int, int] | None = None,
) -> Tensor:
    """``(1, [1 +] M*M, D)`` -> ``(1, [1 +] h*w, D)`` for ``rows = arange(h)``, ``cols = arange(w)`` (the CLS
    row, if the table has one, unchanged); numerically the backbone's own resampling. ``layout``: the table's
    ``pos_embed_layout``, given when known before tracing (a traced shape is a tensor)."""
    cls_rows, side = layout if layout is not None else pos_embed_layout(int(pos_embed.shape[1]))
    dim = pos_embed.shape[-1]
    cls_pos, grid = pos_embed[:, :cls_rows], pos_embed[0, cls_rows:].float().reshape(side, side, dim)
    sizes = [torch.ones_like(positions, dtype=torch.float32).sum() for positions in (rows, cols)]  # 0-d
    at_trained_grid = (sizes[0] == side) & (sizes[1] == side)  # the backbone leaves this case untouched
    matrices = []
    for positions, size in zip((rows, cols), sizes):
        # torch's antialiased kernel copies a dimension whose size does not change.
        untouched = at_trained_grid | (size == side) if antialias else at_trained_grid
        inv_scale = torch.where(untouched, torch.ones_like(size), side / (size + offset))
        matrices.append(interpolation_matrix(positions, side, inv_scale, antialias))
    a_h, a_w = matrices
    resized = torch.einsum("hi,ijd,wj->hwd", a_h, grid, a_w)
    patch_pos = resized.reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat((cls_pos, patch_pos), dim=1)


def patchify_embed(x: Tensor, weight: Tensor, bias: Tensor | None, patch: int) -> Tensor:
    """The patch embedding (a conv with kernel = stride = ``patch``) as reshape + matmul.

    ``(B, C, H, W) -> (B, (H/p)*(W/p), D)``, equal to ``conv2d(x, weight, bias, stride=p)`` flattened.
    The first reshape asks for exactly ``H/p * p`` rows and ``W/p * p`` columns, so an image whose sides
    are not multiples of the patch fails *inside the exported graph* (ONNX Reshape checks the element
    count at run time). The conv would silently drop the remainder, and the backbone's Python check is
    evaluated once by the tracer and does not survive export.
    """
    b, c, h, w = x.shape
    rows, cols = h // patch, w // patch
    patches = x.reshape(b, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(b, rows * cols, c * patch * patch) @ weight.reshape(weight.shape[0], -1).T
    return tokens if bias is None else tokens + bias


def make_exportable(backbone: nn.Module) -> nn.Module:
    """Swap ``backbone.interpolate_pos_encoding`` for the graph-friendly version and the patch embedding
    for :func:`patchify_embed` (this instance only)."""
    embed = backbone.patch_embed

    def patch_embed_forward(self: nn.Module, x: Tensor) -> Tensor:
        return patchify_embed(x, self.proj.weight, self.proj.bias, self.patch_size)

    embed.forward = types.MethodType(patch_embed_forward, embed)

    layout = pos_embed_layout(int(backbone.pos_embed.shape[1]))  # fixed by the weights; read before tracing

    def interpolate_pos_encoding(self: nn.Module, x: Tensor, height: int, width: int) -> Tensor:
        patch = self.patch_size
        rows = torch.arange(height // patch, device=x.device)
        cols = torch.arange(width // patch, device=x.device)
        pos = resample_pos_embed(
            self.pos_embed, rows, cols, self.interpolate_offset, self.interpolate_antialias, layout
        )
        return pos.to(x.dtype)

    backbone.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, backbone)
    if getattr(backbone, "rope_embed", None) is not None:
        backbone.rope_embed.coordinates = types.MethodType(traced_rope_coordinates, backbone.rope_embed)
    return backbone


def traced_rope_coordinates(self: nn.Module, height: Tensor | int, width: Tensor | int) -> Tensor:
    """RoPE's patch centres (:meth:`dinolite.models.rope.RopePositionEmbedding.coordinates`) from tensor
    sizes only: ``arange`` and sums of ones, so the traced graph computes them for every image size."""
    device = self.periods.device
    rows = torch.arange(height, device=device).float()
    cols = torch.arange(width, device=device).float()
    size_h, size_w = (torch.ones_like(t).sum() for t in (rows, cols))  # 0-d tensors in the graph
    if self.normalize_coords == "max":
        size_h = size_w = torch.maximum(size_h, size_w)
    elif self.normalize_coords == "min":
        size_h = size_w = torch.minimum(size_h, size_w)
    grid_rows = ((rows + 0.5) / size_h)[:, None].expand(-1, cols.shape[0])
    grid_cols = ((cols + 0.5) / size_w)[None, :].expand(rows.shape[0], -1)
    return 2.0 * torch.stack((grid_rows, grid_cols), dim=-1).flatten(0, 1) - 1.0
