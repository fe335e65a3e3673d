"""Axial rotary position embedding for ViTs (RoPE: Su et al., 2021, "RoFormer"; axial 2-D form and its
options as in DINOv3: Siméoni et al., 2025, facebookresearch/dinov3 ``6876159``
``dinov3/layers/rope_position_encoding.py``, ``dinov3/layers/attention.py``).

``student.pos_embed=rope``: no position table; every block rotates the patch tokens' queries and keys
(prefix tokens, CLS and registers / DINOv3's storage tokens, are left as they are):

- patch ``(r, c)`` of an ``H x W`` grid sits at ``y = 2 (r + 1/2) / H - 1``, ``x = 2 (c + 1/2) / W - 1``
  (``normalize_coords="separate"``, DINOv3's default; ``"max"`` / ``"min"`` divide both axes by the grid's
  longer / shorter side instead), so coordinates lie in ``[-1, 1]`` at every resolution;
- a head of ``d`` channels has ``d / 4`` periods ``p_k = base ** (4k / d)`` (``base`` 100), or ``d / 4``
  periods geometrically spaced from ``min_period`` to ``max_period``;
- angles ``a = 2 pi [y / p_0 .. y / p_{d/4-1}, x / p_0 .. x / p_{d/4-1}]`` (``d / 2`` values) tiled twice to
  ``d``; a query or key ``q`` becomes ``q cos(a) + rotate_half(q) sin(a)`` with
  ``rotate_half([q1, q2]) = [-q2, q1]`` (halves of ``d``).

So channel ``i`` and ``i + d/2`` rotate together by one angle, and ``q_i . k_j`` depends on the positions
only through ``y_i - y_j`` and ``x_i - x_j``. In training mode only, the coordinates are augmented, each
draw from the global RNG: ``shift_coords`` adds one uniform value in ``[-s, s]`` per axis, ``jitter_coords``
multiplies each axis by its own log-uniform value in ``[1/j, j]``, ``rescale_coords`` both axes by one
log-uniform value in ``[1/r, r]`` (in that order). DINOv3's backbone draws anew for every block, and so does
dinolite's. The periods are a persistent buffer, key ``rope_embed.periods`` as in DINOv3's checkpoints.
Angles are computed in float32 (DINOv3's released backbones' ``pos_embed_rope_dtype: fp32``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

NORMALIZE_COORDS = ("separate", "max", "min")


@dataclass(frozen=True)
class RotaryAngles:
    """``sin`` and ``cos`` of the rotation angles, ``(P, d)`` for ``P`` patches (or ``(B, 1, P, d)`` per image),
    for the last ``P`` tokens of a sequence; the tokens before them are not rotated."""

    sin: Tensor
    cos: Tensor

    def keep(self, keep_indices: Tensor) -> RotaryAngles:
        """The angles of the kept patches ``keep_indices (B, K)``: ``(B, 1, K, d)`` (a head axis to broadcast)."""
        return RotaryAngles(self.sin[keep_indices].unsqueeze(1), self.cos[keep_indices].unsqueeze(1))


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the halves of the last axis."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: Tensor, angles: RotaryAngles) -> Tensor:
    """Rotate the last ``P`` tokens of ``x (B, heads, T, d)`` by ``angles``; the ``T - P`` prefix tokens stay.
    Computed in the angles' dtype (float32) and returned in ``x``'s."""
    patches = angles.sin.shape[-2]
    prefix = x.shape[-2] - patches
    if not torch.jit.is_tracing() and prefix < 0:
        raise ValueError(f"rotary angles for {patches} patches do not fit a sequence of {x.shape[-2]} tokens")
    rotated = x[..., prefix:, :].to(angles.sin.dtype)
    rotated = rotated * angles.cos + rotate_half(rotated) * angles.sin
    return torch.cat((x[..., :prefix, :], rotated.to(x.dtype)), dim=-2)


def rope_periods(head_dim: int, base: float | None, min_period: float | None, max_period: float | None) -> Tensor:
    """The ``head_dim / 4`` periods (float32): ``base ** (4k / head_dim)``, or geometric from ``min_period`` to
    ``max_period``; exactly one of the two parametrisations must be given."""
    both_periods = min_period is not None and max_period is not None
    if (base is None) != both_periods or (min_period is None) != (max_period is None):
        raise ValueError(
            f"RoPE needs either a base or both min_period and max_period (base={base}, min_period={min_period}, "
            f"max_period={max_period})"
        )
    count = head_dim // 4
    if base is not None:
        return base ** (2 * torch.arange(count, dtype=torch.float32) / (head_dim // 2))
    ratio = max_period / min_period
    return ratio ** torch.linspace(0, 1, count, dtype=torch.float32) / ratio * max_period


class RopePositionEmbedding(nn.Module):
    """The angles of an ``H x W`` patch grid (:meth:`forward`); options as the module docstring says."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        base: float | None = 100.0,
        min_period: float | None = None,
        max_period: float | None = None,
        normalize_coords: str = "separate",
        shift_coords: float | None = None,
        jitter_coords: float | None = None,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % (4 * num_heads):
            raise ValueError(
                f"pos_embed=rope needs embed_dim divisible by 4 * num_heads (two axes, sin and cos pairs): "
                f"embed_dim={embed_dim}, num_heads={num_heads}"
            )
        if normalize_coords not in NORMALIZE_COORDS:
            raise ValueError(f"normalize_coords={normalize_coords!r} is not one of {', '.join(NORMALIZE_COORDS)}")
        for name, value in (("shift_coords", shift_coords), ("jitter_coords", jitter_coords)):
            if value is not None and value < (0 if name == "shift_coords" else 1):
                raise ValueError(f"{name}={value} must be >= {0 if name == 'shift_coords' else 1} or None")
        if rescale_coords is not None and rescale_coords < 1:
            raise ValueError(f"rescale_coords={rescale_coords} must be >= 1 or None")
        self.head_dim = embed_dim // num_heads
        self.base, self.min_period, self.max_period = base, min_period, max_period
        self.normalize_coords = normalize_coords
        self.shift_coords, self.jitter_coords, self.rescale_coords = shift_coords, jitter_coords, rescale_coords
        self.register_buffer("periods", rope_periods(self.head_dim, base, min_period, max_period), persistent=True)

    @property
    def augments(self) -> bool:
        """True when a forward in training mode draws random coordinates."""
        return self.training and any(
            v is not None for v in (self.shift_coords, self.jitter_coords, self.rescale_coords)
        )

    def reset_parameters(self) -> None:
        self.periods.copy_(rope_periods(self.head_dim, self.base, self.min_period, self.max_period))

    def coordinates(self, height: int, width: int) -> Tensor:
        """``(H W, 2)`` row-major ``(y, x)`` patch centres in ``[-1, 1]`` (before augmentation)."""
        device = self.periods.device
        scale_h, scale_w = {"separate": (height, width), "max": (max(height, width),) * 2}.get(
            self.normalize_coords, (min(height, width),) * 2
        )
        rows = torch.arange(0.5, height, device=device, dtype=torch.float32) / scale_h
        cols = torch.arange(0.5, width, device=device, dtype=torch.float32) / scale_w
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)
        return 2.0 * coords - 1.0

    def augment(self, coords: Tensor) -> Tensor:
        """Training-time shift, jitter and rescale of ``coords (P, 2)`` (the module docstring's order)."""
        dd = {"device": coords.device, "dtype": coords.dtype}
        if self.shift_coords is not None:
            coords = coords + torch.empty(2, **dd).uniform_(-self.shift_coords, self.shift_coords)
        if self.jitter_coords is not None:
            log_jitter = math.log(self.jitter_coords)
            coords = coords * torch.empty(2, **dd).uniform_(-log_jitter, log_jitter).exp()
        if self.rescale_coords is not None:
            log_rescale = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-log_rescale, log_rescale).exp()
        return coords

    def forward(self, grid: tuple[int, int]) -> RotaryAngles:
        """Angles ``(H W, head_dim)`` for a ``grid`` ``(H, W)`` of patches."""
        coords = self.coordinates(grid[0], grid[1])  # no int(): an ONNX trace keeps the grid symbolic
        if self.augments:
            coords = self.augment(coords)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # (P, 2, d/4)
        angles = angles.flatten(1, 2)
        angles = torch.cat((angles, angles), dim=-1)  # (P, d): [y, x] angles, twice (a concat: no ONNX Tile)
        return RotaryAngles(torch.sin(angles), torch.cos(angles))

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, base={self.base}, min_period={self.min_period}, "
            f"max_period={self.max_period}, normalize_coords={self.normalize_coords!r}, shift={self.shift_coords}, "
            f"jitter={self.jitter_coords}, rescale={self.rescale_coords}"
        )
