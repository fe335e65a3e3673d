"""dinolite/train/methods/mae.py: MSE on the removed patches' pixels, an encoder that sees only the visible
patches, no teacher, and its section's rules."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.losses import MAELoss
from dinolite.train.methods import get_method, mae
from dinolite.train.methods.masked_common import flops_record, transformer_macs, vit_macs
from tests.train.methods.test_masked_methods import TINY, _batch

MAE_TINY = [*TINY, "mae.decoder_embed_dim=16", "mae.decoder_depth=1", "mae.decoder_num_heads=2"]


def _objective(overrides: tuple[str, ...] = ()):
    cfg = load_config("demo_mae", [*MAE_TINY, *overrides])
    torch.manual_seed(0)
    return cfg, mae.build_objective(cfg), _batch(cfg, get_method("mae"))


def test_the_loss_is_maes_mse_on_the_decoders_prediction_of_the_removed_patches() -> None:
    cfg, objective, batch = _objective()
    assert len(objective.teacher) == 0 and list(objective.student) == ["backbone", "decoder"]
    out = objective(batch, 0)
    encoded = objective.student["backbone"].forward_features(batch["images"], keep_indices=batch["ids_keep"])
    latent = torch.cat([encoded["x_norm_clstoken"][:, None], encoded["x_norm_patchtokens"]], dim=1)
    prediction = objective.student["decoder"](latent, batch["ids_restore"])
    masked = torch.ones_like(batch["ids_restore"], dtype=torch.bool)
    for row, keep in enumerate(batch["ids_keep"]):
        masked[row, keep] = False
    expected = MAELoss(cfg.student.patch_size, norm_pix_loss=True)(prediction, batch["images"], masked)
    torch.testing.assert_close(out.loss, expected)
    assert masked.float().mean().item() == 0.75
    assert set(out.terms) == {"mae_mse"} and set(out.diagnostics) == {"patch_features", "cls"}


def test_the_encoder_never_sees_the_removed_patches() -> None:
    """Changing the pixels of a removed patch leaves the encoder's outputs unchanged; the target moves."""
    cfg, objective, batch = _objective(("mae.norm_pix_loss=false",))
    objective.eval()
    p, grid = cfg.student.patch_size, cfg.crops.global_crops_size // cfg.student.patch_size
    removed = int((batch["ids_restore"][0] >= batch["ids_keep"].shape[1]).nonzero()[0])
    changed = batch["images"].clone()
    row, col = divmod(removed, grid)
    changed[0, :, row * p : (row + 1) * p, col * p : (col + 1) * p] += 5.0
    backbone = objective.student["backbone"]
    before = backbone.forward_features(batch["images"], keep_indices=batch["ids_keep"])["x_norm_clstoken"]
    after = backbone.forward_features(changed, keep_indices=batch["ids_keep"])["x_norm_clstoken"]
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert objective({**batch, "images": changed}, 0).loss > objective(batch, 0).loss


def test_the_gradient_reaches_the_encoder_and_the_decoder_but_not_the_unused_mask_token() -> None:
    _, objective, batch = _objective()
    objective(batch, 0).loss.backward()
    missing = [name for name, p in objective.student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == ["backbone.mask_token"]  # SimMIM's token: the encoder drops patches instead


def test_flops_count_the_encoder_on_the_visible_patches_and_the_decoder_on_every_position() -> None:
    cfg = load_config("demo_mae", MAE_TINY)
    n, visible, width = 64, 16, 24
    decoder = (1 + visible) * width * 16 + transformer_macs(1 + n, 16, 1) + n * 16 * 3 * cfg.student.patch_size**2
    expected = flops_record(
        vit_macs(cfg, 32, visible_patches=visible) + decoder,
        0.0,
        cfg,
        visible_patches=visible,
        flops_encoder=round(2 * vit_macs(cfg, 32, visible_patches=visible)),
        flops_decoder=round(2 * decoder),
    )
    assert mae.training_flops(cfg) == expected


def test_the_student_encoder_is_evaluated_on_its_cls_token() -> None:
    spec = get_method("mae")
    assert (spec.eval_network, spec.eval_features, spec.head_names(None)) == ("student", "cls", ("decoder",))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mae.mask_ratio=1.0", "mae.mask_ratio"),
        ("mae.decoder_depth=0", "mae.decoder_depth"),
        ("mae.decoder_num_heads=3", "mae.decoder_embed_dim"),
        ("crops.global_crops_size=30", "crops.global_crops_size"),
    ],
)
def test_the_section_names_the_key_at_fault(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", "\\.")):
        load_config("demo_mae", [override])
