"""BEiT's masking against the release: microsoft/unilm (768a3c8) beit/masking_generator.py, run outside the repo
by /work/wt/notes/released_golden/beit_masks.py with run_beit_pretraining.py's arguments (num_masking_patches,
min_num_patches, max_num_patches None, aspect 0.3). The release draws with Python's ``random``, dinolite with
torch generators, so the comparison is of distributions over many masks: the share of masks per masked count
(4000 released masks) and how often each patch is masked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinolite.config import load_config
from dinolite.train.methods import beit

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "released" / "beit_masks.safetensors"
DRAWS = 1000


def _statistics(generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([generator(count, g).flatten() for _ in range(DRAWS)])
    return torch.bincount(masks.sum(1), minlength=count + 1).float() / DRAWS, masks.float().mean(0)


@pytest.mark.parametrize("name, preset", [("vitb16", "vitb16_beit"), ("demo", "demo_beit")])
def test_the_masks_follow_the_released_generators_distribution(name, preset) -> None:
    released = load_file(str(FIXTURE))
    cfg = load_config(preset)
    generator = beit.mask_generator(cfg)
    histogram, frequency = _statistics(generator, cfg.beit.num_mask_patches)
    total_variation = 0.5 * (histogram - released[f"{name}_count_histogram"]).abs().sum()
    assert total_variation < 0.06  # measured 0.019 (vitb16) and 0.009 (demo)
    assert (frequency - released[f"{name}_patch_frequency"]).abs().max() < 0.06  # sampling noise: ~0.04

    # dinolite's iBOT rule (stop when less than a block is left) is visibly another distribution
    generator.stop_below_min_block = True
    histogram, _ = _statistics(generator, cfg.beit.num_mask_patches)
    assert 0.5 * (histogram - released[f"{name}_count_histogram"]).abs().sum() > 0.5  # measured 0.84 / 0.79
