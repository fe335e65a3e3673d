"""Patch masks of the masked-prediction methods (I-JEPA, SimMIM, MSN, MAE), beside iBOT's block masks.

Every sampler draws from a ``torch.Generator`` it is given and nothing else, so a batch's masks are a
function of the loader's per-batch generator (seeded by ``(seed, rank, batch)``) and a resumed run draws
exactly the masks the uninterrupted run drew. Within a batch, each sample gets its own generator,
seeded from the batch generator in sample order (:func:`per_sample_generators`): a sample's masks do
not depend on how many draws the samples before it needed (I-JEPA's rejection loop varies).

* :class:`MultiBlockMaskGenerator` -- I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images
  with a Joint-Embedding Predictive Architecture", Sec. 3 and Appendix C): ``num_targets`` target blocks
  of scale ``U(0.15, 0.2)`` and aspect ``U(0.75, 1.5)`` (block size drawn once per batch, as the
  reference collator does, so every image's targets have the same patch count), and one context block
  of scale ``U(0.85, 1.0)``, aspect 1, with every target patch removed. Context sizes then differ per
  image; each image keeps a random subset of ``min`` over the batch so the batch stacks (the reference
  keeps the first ``min`` indices in raster order, which drops the bottom rows more often; a random
  subset has no such bias).

  ``sampler="released"`` draws what the released collator draws instead (facebookresearch/ijepa 52c1ae9
  ``src/masks/multiblock.py``, ``MaskCollator``), given the same two generators (:meth:`MultiBlockMaskGenerator.
  released_masks`): one uniform number per block size sets both its scale and its aspect ratio (56-63), the
  area is ``int(N * scale)`` and a side is at most ``H - 1`` / ``W - 1`` (60-70); a corner is drawn in
  ``[0, H - h)`` (89-90), so no block ever touches the last row or column (the context, ``(H-1) x (W-1)`` at
  scale >= 0.85 on 8x8 to 14x14 grids, is always the top-left square); a block needs *more* than
  ``min_keep`` patches (98), and after every 20 failed context draws one more target is allowed to overlap
  it (77-81, 99-104: the only case where a target patch can sit in the context); every image keeps the
  first ``min`` indices over the batch in raster order (164-168). Sizes come from one generator (the
  release's, seeded with the step), corners from another (the release's: torch's global one).
* :class:`SimMIMMaskGenerator` -- SimMIM (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image
  Modeling", Sec. 3.1): exactly ``ceil(ratio * M)`` of the ``M`` mask units (squares of
  ``mask_patch_size`` pixels, a multiple of the ViT patch) are masked, then each unit is expanded to the
  ViT patches it covers (paper: 32 px units, ratio 0.6, 16 px patches).
* :func:`random_keep_indices` -- MSN's patch dropping (Assran et al. 2022, "Masked Siamese Networks for
  Label-Efficient Learning", Sec. 3: "random masking"): each anchor view keeps a uniformly random subset
  of ``round((1 - ratio) * N)`` patches (the same count for every image, so it stacks).
* :func:`mae_noise` / :func:`mae_shuffle` -- MAE's random masking (He et al. 2022, "Masked Autoencoders Are
  Scalable Vision Learners", Sec. 3: "random sampling"), drawn as the released ``random_masking`` draws it
  (facebookresearch/mae ``models_mae.py``): one uniform number per patch, the patches sorted by it, the first
  ``int(N * (1 - ratio))`` kept in that shuffled order, and the permutation that undoes the shuffle.

Indices are into the row-major patch grid (what the ViT's ``keep_indices`` path and the predictor take).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_SEED_RANGE = 2**62
# "paper": the paper's blocks (the class docstring); "released": the released collator's (the module docstring)
MASK_SAMPLERS = ("paper", "released")
RELEASED_PATIENCE = 20  # failed draws of a block before the released collator relaxes one constraint (line 85)


def per_sample_generators(generator: torch.Generator | None, n: int) -> list[torch.Generator]:
    """``n`` generators seeded from ``generator`` in order (from torch's global RNG when it is None)."""
    seeds = torch.randint(0, _SEED_RANGE, (n,), generator=generator).tolist()
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _as_grid(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"patch grid must be positive, got {size}")
    return h, w


class MultiBlockMaskGenerator:
    """I-JEPA multi-block masks: ``gen(batch_size, generator) -> (context_idx, target_idx)``.

    ``context_idx (B, Nc)`` and ``target_idx (B, num_targets, Nt)`` are sorted long indices into the
    ``H x W`` patch grid; target patches never appear in the context. ``min_keep`` is the least number
    of context patches accepted for one image (placements are redrawn until it holds, up to
    ``attempts`` times, after which an error names the settings). ``sampler="released"``: the released
    collator's masks instead (the module docstring; :meth:`released_masks`).
    """

    def __init__(
        self,
        grid: int | Sequence[int],
        num_targets: int = 4,
        target_scale: Sequence[float] = (0.15, 0.2),
        target_aspect: Sequence[float] = (0.75, 1.5),
        context_scale: Sequence[float] = (0.85, 1.0),
        context_aspect: Sequence[float] = (1.0, 1.0),
        min_keep: int = 4,
        attempts: int = 50,
        sampler: str = "paper",
    ) -> None:
        self.height, self.width = _as_grid(grid)
        if sampler not in MASK_SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not one of {', '.join(MASK_SAMPLERS)}")
        if sampler == "released" and min(self.height, self.width) < 2:
            raise ValueError(
                f"the released sampler needs a grid of at least 2x2 (its blocks stop one short), got {grid}"
            )
        self.sampler = sampler
        for name, (lo, hi) in (("target_scale", target_scale), ("context_scale", context_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        for name, (lo, hi) in (("target_aspect", target_aspect), ("context_aspect", context_aspect)):
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        if not 1 <= min_keep < self.height * self.width:
            raise ValueError(f"min_keep={min_keep} must be in [1, {self.height * self.width})")
        self.num_targets = int(num_targets)
        self.target_scale, self.target_aspect = tuple(target_scale), tuple(target_aspect)
        self.context_scale, self.context_aspect = tuple(context_scale), tuple(context_aspect)
        self.min_keep, self.attempts = int(min_keep), int(attempts)

    def __repr__(self) -> str:
        return (
            f"MultiBlockMaskGenerator({self.height}x{self.width}, {self.num_targets} targets scale "
            f"{self.target_scale} aspect {self.target_aspect}, context scale {self.context_scale}, {self.sampler})"
        )

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def block_size(
        self, scale: Sequence[float], aspect: Sequence[float], generator: torch.Generator
    ) -> tuple[int, int]:
        """(h, w) of a block covering ``U(scale)`` of the grid with aspect h/w ``U(aspect)``, inside it."""
        area = self.num_patches * _uniform(generator, *scale)
        ratio = _uniform(generator, *aspect)
        h = max(1, min(self.height, round(math.sqrt(area * ratio))))
        w = max(1, min(self.width, round(math.sqrt(area / ratio))))
        return h, w

    def _place(self, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        top = int(torch.randint(0, self.height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, self.width - w + 1, (1,), generator=generator))
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        mask[top : top + h, left : left + w] = True
        return mask

    def sample_one(
        self, target_hw: tuple[int, int], context_hw: tuple[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: ``(context bool (H*W,), targets bool (num_targets, H*W))``."""
        for _ in range(self.attempts):
            targets = torch.stack([self._place(*target_hw, generator) for _ in range(self.num_targets)])
            context = self._place(*context_hw, generator) & ~targets.any(0)
            if int(context.sum()) >= self.min_keep:
                return context.flatten(), targets.flatten(1)
        raise ValueError(
            f"I-JEPA masks: no placement of {self.num_targets} targets of {target_hw} left {self.min_keep} "
            f"context patches of a {context_hw} block in a {self.height}x{self.width} grid after "
            f"{self.attempts} attempts; lower num_targets or target_scale"
        )

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.sampler == "released":
            corner_seed = int(torch.randint(0, _SEED_RANGE, (1,), generator=batch_gen))
            return self.released_masks(batch_size, batch_gen, torch.Generator().manual_seed(corner_seed))
        # One target size and one context size per batch (the reference collator does the same), so
        # all target sets have h*w patches each.
        target_hw = self.block_size(self.target_scale, self.target_aspect, batch_gen)
        context_hw = self.block_size(self.context_scale, self.context_aspect, batch_gen)
        sample_gens = per_sample_generators(batch_gen, batch_size)
        drawn = [self.sample_one(target_hw, context_hw, g) for g in sample_gens]
        n_keep = min(int(c.sum()) for c, _ in drawn)
        contexts, targets = [], []
        for (context, target), g in zip(drawn, sample_gens):
            kept = context.nonzero().flatten()
            subset = torch.randperm(kept.numel(), generator=g)[:n_keep]
            contexts.append(kept[subset].sort().values)
            targets.append(torch.stack([t.nonzero().flatten() for t in target]))
        return torch.stack(contexts), torch.stack(targets)

    # ----------------------------------------------------------------------------------------------
    # The released collator (the module docstring gives its file:lines)
    # ----------------------------------------------------------------------------------------------
    def released_block_size(
        self, scale: Sequence[float], aspect: Sequence[float], generator: torch.Generator
    ) -> tuple[int, int]:
        """(h, w) as the release draws it: ONE uniform number sets the scale and the aspect ratio, the area is
        ``int(N * scale)``, and each side is cut to one less than the grid's."""
        u = float(torch.rand(1, generator=generator))
        area = int(self.num_patches * (scale[0] + u * (scale[1] - scale[0])))
        ratio = aspect[0] + u * (aspect[1] - aspect[0])
        h = min(round(math.sqrt(area * ratio)), self.height - 1)
        w = min(round(math.sqrt(area / ratio)), self.width - 1)
        return h, w

    def _released_block(
        self, hw: tuple[int, int], generator: torch.Generator, allowed: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        """Row-major indices of one block: corner in ``[0, H - h) x [0, W - w)``, restricted to the ``allowed``
        regions still in force, redrawn until more than ``min_keep`` patches remain; every
        ``RELEASED_PATIENCE`` failures the last region in force is dropped."""
        h, w = hw
        relaxed = failures = 0
        while True:
            top = int(torch.randint(0, self.height - h, (1,), generator=generator))
            left = int(torch.randint(0, self.width - w, (1,), generator=generator))
            block = torch.zeros(self.height, self.width, dtype=torch.bool)
            block[top : top + h, left : left + w] = True
            for region in allowed[: max(len(allowed) - relaxed, 0)]:
                block &= region
            if int(block.sum()) > self.min_keep:
                return block.flatten().nonzero().flatten()
            failures += 1
            if failures % RELEASED_PATIENCE == 0:
                relaxed += 1
                if relaxed > len(allowed):  # unconstrained and still too small: the release loops forever
                    raise ValueError(
                        f"I-JEPA released masks: a {h}x{w} block never holds more than min_keep={self.min_keep} "
                        f"patches of a {self.height}x{self.width} grid; lower min_keep or raise the block scale"
                    )

    def released_masks(
        self, batch_size: int, size_generator: torch.Generator, corner_generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The released collator's ``(context_idx (B, Nc), target_idx (B, M, Nt))``: with ``size_generator``
        seeded as the release seeds its generator (the step) and ``corner_generator`` as torch's global one, the
        same masks as ``MaskCollator.__call__`` (its ``masks_pred[m][b]`` is ``target_idx[b, m]``)."""
        target_hw = self.released_block_size(self.target_scale, self.target_aspect, size_generator)
        context_hw = self.released_block_size(self.context_scale, self.context_aspect, size_generator)
        contexts, targets = [], []
        for _ in range(batch_size):
            blocks = [self._released_block(target_hw, corner_generator) for _ in range(self.num_targets)]
            outside = [self._outside(block) for block in blocks]
            targets.append(blocks)
            contexts.append(self._released_block(context_hw, corner_generator, outside))
        n_target = min(len(block) for blocks in targets for block in blocks)
        n_context = min(len(context) for context in contexts)
        return (
            torch.stack([context[:n_context] for context in contexts]),
            torch.stack([torch.stack([block[:n_target] for block in blocks]) for blocks in targets]),
        )

    def _outside(self, block: torch.Tensor) -> torch.Tensor:
        """The ``(H, W)`` bool complement of a block given by its indices."""
        region = torch.ones(self.num_patches, dtype=torch.bool)
        region[block] = False
        return region.reshape(self.height, self.width)


class SimMIMMaskGenerator:
    """SimMIM random masks: ``gen(generator) -> bool (H/p, W/p)`` over ViT patches (True = masked).

    ``input_size`` pixels, ``mask_patch_size`` pixels per mask unit (a multiple of ``model_patch_size``),
    exactly ``ceil(mask_ratio * units)`` units masked.
    """

    def __init__(
        self, input_size: int = 192, mask_patch_size: int = 32, model_patch_size: int = 16, mask_ratio: float = 0.6
    ) -> None:
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size={mask_patch_size} must be a multiple of the ViT patch_size={model_patch_size}"
            )
        if input_size % mask_patch_size:
            raise ValueError(f"input_size={input_size} must be a multiple of mask_patch_size={mask_patch_size}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.input_size = int(input_size)
        self.units = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.mask_count = math.ceil(self.units * self.units * mask_ratio)
        self.mask_ratio = mask_ratio

    @property
    def grid(self) -> int:
        return self.units * self.scale

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        order = torch.randperm(self.units * self.units, generator=generator)
        unit_mask = torch.zeros(self.units * self.units, dtype=torch.bool)
        unit_mask[order[: self.mask_count]] = True
        unit_mask = unit_mask.reshape(self.units, self.units)
        return unit_mask.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def batch(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, H/p * W/p)`` masks, one per-sample generator each."""
        return torch.stack([self(g).flatten() for g in per_sample_generators(generator, batch_size)])


PATCH_DROP_PER = ("image", "batch")
PATCH_DROP_ROUNDING = ("round", "floor")


def kept_patch_count(num_patches: int, mask_ratio: float, rounding: str = "round") -> int:
    """Patches an anchor keeps after dropping ``mask_ratio``: ``round`` or ``floor`` (MSN's release,
    ``deit.py:252``, on the same float product) of ``num_patches * (1 - mask_ratio)``, at least 1."""
    if rounding not in PATCH_DROP_ROUNDING:
        raise ValueError(f"rounding must be one of {PATCH_DROP_ROUNDING}, got {rounding!r}")
    kept = num_patches * (1.0 - mask_ratio)
    return max(1, math.floor(kept) if rounding == "floor" else round(kept))


def random_keep_indices(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    per: str = "image",
    rounding: str = "round",
) -> torch.Tensor:
    """MSN patch dropping: ``(B, n_keep)`` sorted indices of the kept patches (:func:`kept_patch_count`).
    ``per="image"``: one random subset per image; ``per="batch"``: one subset shared by every row, as MSN's
    release draws one permutation per forward (``deit.py:253``)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if per not in PATCH_DROP_PER:
        raise ValueError(f"per must be one of {PATCH_DROP_PER}, got {per!r}")
    n_keep = kept_patch_count(num_patches, mask_ratio, rounding)
    n_draws = batch_size if per == "image" else min(batch_size, 1)
    rows = [
        torch.randperm(num_patches, generator=g)[:n_keep].sort().values
        for g in per_sample_generators(generator, n_draws)
    ]
    if per == "batch":
        return torch.stack(rows).expand(batch_size, -1).clone() if rows else torch.empty(0, n_keep, dtype=torch.long)
    return torch.stack(rows)


def mae_noise(batch_size: int, num_patches: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, N)`` uniform numbers in [0, 1), one row per image from its own generator (:func:`per_sample_generators`)."""
    rows = [torch.rand(num_patches, generator=g) for g in per_sample_generators(generator, batch_size)]
    return torch.stack(rows) if rows else torch.empty(0, num_patches)


def mae_shuffle(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's masking from ``noise (B, N)``: ``ids_keep (B, K)``, the kept patches in ascending-noise order (the
    order the encoder sees them), and ``ids_restore (B, N)``, each patch's place in that shuffled order (patch
    ``i`` is masked iff ``ids_restore[:, i] >= K``). ``K = int(N * (1 - mask_ratio))``, at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if noise.ndim != 2:
        raise ValueError(f"noise must be (batch, patches), got {tuple(noise.shape)}")
    n_keep = kept_patch_count(noise.shape[1], mask_ratio, rounding="floor")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return ids_shuffle[:, :n_keep], ids_restore
