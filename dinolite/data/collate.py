"""Batch multi-crop samples and draw iBOT masks (DINOv2's ``collate_data_and_cast`` keys)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import torch


def _crops_of(sample: Any) -> Mapping[str, Sequence[torch.Tensor]]:
    # DINOv2 datasets yield (crops_dict, label); ours yields the dict itself. Accept both.
    if isinstance(sample, Mapping):
        return sample
    if isinstance(sample, (tuple, list)) and sample and isinstance(sample[0], Mapping):
        return sample[0]
    raise TypeError(f"a sample must be a crops dict or a (crops dict, label) pair, got {type(sample).__name__}")


def collate_data_and_cast(
    samples: Sequence[Any],
    mask_ratio_tuple: Sequence[float],
    mask_probability: float,
    n_tokens: int,
    mask_generator: Callable[..., torch.Tensor],
    dtype: torch.dtype = torch.float32,
    generator: Optional[torch.Generator] = None,
) -> dict[str, Any]:
    """Stack crops crop-major and mask a fraction of the global crops for iBOT.

    With ``G = 2B`` global crops, ``n = int(G * mask_probability)`` of them get a block mask; the i-th
    masked one asks for ``int(n_tokens * U(p_i, p_{i+1}))`` patches where ``p = linspace(lo, hi, n+1)``
    (ratios stratified over ``mask_ratio_tuple``, as iBOT/DINOv2); which crops are masked is a random
    permutation. ``masks_weight`` gives every masked patch the weight ``1 / #masked patches of its
    image`` so that each image counts equally in the patch loss; ``upperbound = sum_i int(n_tokens *
    p_{i+1})`` bounds the number of masked patches (for fixed-size buffers).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if len(mask_ratio_tuple) != 2 or not 0.0 <= mask_ratio_tuple[0] <= mask_ratio_tuple[1] <= 1.0:
        raise ValueError(f"mask_ratio_tuple must be (low, high) in [0, 1], got {tuple(mask_ratio_tuple)}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    crops = [_crops_of(s) for s in samples]
    n_global = len(crops[0]["global_crops"])
    n_local = len(crops[0]["local_crops"])
    global_crops = torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops]).to(dtype)
    if n_local:
        local_crops = torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops]).to(dtype)
    else:
        local_crops = torch.empty(0, *global_crops.shape[1:2], 0, 0, dtype=dtype)

    n_crops = global_crops.shape[0]
    n_masked_crops = int(n_crops * mask_probability)
    ratios = torch.linspace(float(mask_ratio_tuple[0]), float(mask_ratio_tuple[1]), n_masked_crops + 1).tolist()
    masks: list[torch.Tensor] = []
    upperbound = 0
    for i in range(n_masked_crops):
        lo, hi = ratios[i], ratios[i + 1]
        ratio = lo + (hi - lo) * torch.rand((), generator=generator).item()
        mask = torch.as_tensor(mask_generator(int(n_tokens * ratio), generator=generator), dtype=torch.bool)
        masks.append(mask.flatten())
        upperbound += int(n_tokens * hi)
    masks.extend(torch.zeros(n_tokens, dtype=torch.bool) for _ in range(n_crops - n_masked_crops))
    order = torch.randperm(n_crops, generator=generator).tolist()
    collated_masks = torch.stack([masks[i] for i in order])
    if collated_masks.shape[1] != n_tokens:
        raise ValueError(f"mask generator returned {collated_masks.shape[1]} patches per mask, expected {n_tokens}")

    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_image_weight = 1.0 / collated_masks.sum(-1).clamp(min=1).to(torch.float32)
    masks_weight = per_image_weight.unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    extra = {}
    if "gram_teacher_crops" in crops[0]:  # DINOv3's Gram teacher crops, crop-major as the global crops
        extra["collated_gram_teacher_crops"] = torch.stack(
            [c["gram_teacher_crops"][i] for i in range(n_global) for c in crops]
        ).to(dtype)
    return {
        **extra,
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.full((1,), mask_indices_list.numel(), dtype=torch.long),
        "upperbound": upperbound,
    }
