"""dinolite/train/methods/simmim.py: L1 on the masked pixels of one view, no teacher, and its section's rules."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.losses import SimMIMLoss
from dinolite.train.methods import get_method, simmim
from dinolite.train.methods.masked_common import flops_record, vit_macs
from tests.train.methods.test_masked_methods import TINY, _batch


def test_the_loss_is_simmims_l1_on_the_decoders_reconstruction_of_masked_pixels() -> None:
    cfg = load_config("demo_simmim", TINY)
    torch.manual_seed(0)
    objective = simmim.build_objective(cfg)
    batch = _batch(cfg, get_method("simmim"))
    assert len(objective.teacher) == 0 and list(objective.student) == ["backbone", "decoder"]
    out = objective(batch, 0)
    features = objective.student["backbone"].forward_features(batch["images"], masks=batch["masks"])
    grid = batch["images"].shape[-1] // cfg.student.patch_size
    reconstruction = objective.student["decoder"](features["x_norm_patchtokens"], (grid, grid))
    expected = SimMIMLoss(cfg.student.patch_size, cfg.simmim.norm_target)(
        reconstruction, batch["images"], batch["masks"]
    )
    torch.testing.assert_close(out.loss, expected)
    assert set(out.terms) == {"simmim_l1"} and set(out.diagnostics) == {"patch_features", "cls"}


def test_the_masks_cover_the_configured_fraction_of_mask_units() -> None:
    cfg = load_config("demo_simmim", [*TINY, "simmim.mask_ratio=0.5"])
    masks = _batch(cfg, get_method("simmim"))["masks"]
    assert masks.dtype == torch.bool and masks.float().mean(dim=1).tolist() == [0.5] * masks.shape[0]


def test_flops_count_the_whole_encoder_and_the_linear_decoder() -> None:
    cfg = load_config("demo_simmim", TINY)
    n = (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2
    decoder = n * 24 * 3 * cfg.student.patch_size**2
    assert simmim.training_flops(cfg) == flops_record(vit_macs(cfg, cfg.crops.global_crops_size) + decoder, 0.0, cfg)


@pytest.mark.parametrize("override", ["simmim.mask_ratio=1.0", "simmim.mask_patch_size=0"])
def test_the_section_names_the_key_at_fault(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config("demo_simmim", [override])
