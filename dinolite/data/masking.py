"""BEiT-style block-wise mask generator for iBOT's masked patch prediction.

Bao et al., "BEiT: BERT Pre-Training of Image Transformers" (2021), Algorithm 1, as used by iBOT
(Zhou et al. 2022) and DINOv2: rectangles of patches are added until the requested number of patches is
masked. Each rectangle covers ``s ~ U(min_num_patches, budget)`` patches, where the budget is what is
left to mask capped at ``max_num_patches``, and has aspect ratio ``r`` log-uniform in
``[min_aspect, max_aspect]`` (h = round(sqrt(s r)), w = round(sqrt(s / r))). A rectangle is accepted
only when it adds between 1 and ``budget`` new patches; after ``attempts`` rejected draws the generator
stops, so it may mask slightly fewer patches than asked (never more).

Where the two releases differ: dinolite's generator stops as soon as what is left to mask is below
``min_num_patches`` (``stop_below_min_block=True``, the default: iBOT/DINOv2 as dinolite has always run
them). BEiT's released ``masking_generator.py`` keeps drawing there, with ``s ~ U(budget, min_num_patches)``
(Python's ``random.uniform`` accepts a reversed range), so it fills the remainder with small blocks and
reaches the requested count more often; ``stop_below_min_block=False`` is that rule (``train.method: beit``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


class MaskingGenerator:
    """``gen(num_masking_patches, generator) -> bool tensor (H, W)`` with about that many True."""

    def __init__(
        self,
        input_size: tuple[int, int] | int,
        max_num_patches: Optional[float] = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: Optional[float] = None,
        attempts: int = 10,
        stop_below_min_block: bool = True,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = int(input_size[0]), int(input_size[1])
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.num_patches = self.height * self.width
        # DINOv2 caps one block at half of the patches.
        self.max_num_patches = float(max_num_patches) if max_num_patches is not None else 0.5 * self.num_patches
        self.min_num_patches = int(min_num_patches)
        if self.min_num_patches < 1 or self.max_num_patches < self.min_num_patches:
            raise ValueError(
                f"need 1 <= min_num_patches <= max_num_patches, got {self.min_num_patches}, {self.max_num_patches}"
            )
        if not 0 < min_aspect <= (max_aspect or 1 / min_aspect):
            raise ValueError(f"invalid aspect range [{min_aspect}, {max_aspect}]")
        max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.attempts = int(attempts)
        self.stop_below_min_block = bool(stop_below_min_block)

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator({self.height}x{self.width}, blocks of {self.min_num_patches}.."
            f"{self.max_num_patches:g} patches, log-aspect {self.log_aspect_ratio})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _uniform(self, low: float, high: float, generator: Optional[torch.Generator]) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    def _add_block(self, mask: torch.Tensor, budget: float, generator: Optional[torch.Generator]) -> int:
        """Try to mask one more rectangle; returns the number of newly masked patches (0 on failure)."""
        for _ in range(self.attempts):
            target_area = self._uniform(self.min_num_patches, budget, generator)
            aspect = math.exp(self._uniform(*self.log_aspect_ratio, generator))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < h < self.height and 0 < w < self.width:
                top = int(torch.randint(0, self.height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, self.width - w + 1, (1,), generator=generator))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    return new
        return 0

    def __call__(self, num_masking_patches: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            if budget < self.min_num_patches and self.stop_below_min_block:
                break  # a block smaller than the minimum cannot be placed
            added = self._add_block(mask, budget, generator)
            if added == 0:
                break
            count += added
        return mask
