"""dinolite/train/methods/beit.py: masked-token cross-entropy against a frozen tokenizer, no teacher, its
section's rules, the tokenizer input and its record."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError, load_config
from dinolite.losses import BEiTLoss
from dinolite.models.vq_tokenizer import VQTokenizer, file_sha256, save_tokenizer
from dinolite.train.methods import beit, get_method
from dinolite.train.methods.masked_common import vit_macs
from tests.train.methods.test_masked_methods import TINY, _batch

RANDOM = [*TINY, "beit.tokenizer=random", "beit.vocab_size=32"]


def test_the_loss_is_cross_entropy_of_the_lm_head_on_masked_patches_against_the_tokenizers_tokens() -> None:
    cfg = load_config("demo_beit", RANDOM)
    torch.manual_seed(0)
    objective = beit.build_objective(cfg)
    batch = _batch(cfg, get_method("beit"))
    assert len(objective.teacher) == 0 and list(objective.student) == ["backbone", "lm_head"]
    out = objective(batch, 0)
    features = objective.student["backbone"].forward_features(batch["images"], masks=batch["masks"])
    logits = objective.student["lm_head"](features["x_norm_patchtokens"])
    tokens = objective.tokenizer.tokenize(batch["images"])
    torch.testing.assert_close(out.loss, BEiTLoss()(logits, tokens, batch["masks"]))
    assert set(out.terms) == {"beit_ce", "beit_token_accuracy"}
    out.loss.backward()
    assert all(p.grad is None for p in objective.tokenizer.parameters())  # frozen
    assert objective.student["lm_head"].weight.grad.abs().sum() > 0


def test_the_tokenizer_is_frozen_in_eval_mode_and_outside_the_trained_modules() -> None:
    objective = beit.build_objective(load_config("demo_beit", RANDOM))
    objective.train()
    assert not objective.tokenizer.training and objective.student.training
    assert "tokenizer" not in objective.trainable_modules()
    assert not any(p.requires_grad for p in objective.tokenizer.parameters())


def test_masks_are_beits_block_masks_of_the_configured_count() -> None:
    cfg = load_config("demo_beit", [*RANDOM, "train.batch_size_per_gpu=8"])
    masks = _batch(cfg, get_method("beit"), n=8)["masks"]
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    assert masks.shape == (8, grid * grid) and masks.dtype == torch.bool
    assert (masks.sum(dim=1) <= cfg.beit.num_mask_patches).all()
    assert masks.sum(dim=1).float().mean() >= 0.9 * cfg.beit.num_mask_patches
    assert beit.mask_generator(cfg).stop_below_min_block is False  # the release's rule


def test_a_tokenizer_file_is_read_and_its_sha256_recorded_and_checked_on_resume(tmp_path) -> None:
    path = save_tokenizer(
        VQTokenizer(patch_size=4, vocab_size=32, code_dim=8, hidden_dim=8), tmp_path / "t.safetensors"
    )
    objective = beit.build_objective(load_config("demo_beit", [*TINY, f"beit.tokenizer={path}", "beit.vocab_size=32"]))
    state = objective.extra_state()
    assert bytes(state["tokenizer_sha256"].tolist()).hex() == file_sha256(path)
    objective.load_extra_state(state)  # the same tokenizer: accepted
    other = beit.build_objective(load_config("demo_beit", RANDOM))
    with pytest.raises(ConfigError, match="beit.tokenizer.*resume with the run's tokenizer"):
        other.load_extra_state(state)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["beit.tokenizer=''"], "missing value for 'beit.tokenizer'"),
        (["beit.tokenizer=/nonexistent/t.safetensors"], "beit.tokenizer.*no such file"),
        (["beit.tokenizer=TOKENIZER", "beit.vocab_size=64"], "vocab_size=32, but beit.vocab_size=64"),
        (["beit.tokenizer=TOKENIZER", "beit.vocab_size=32", "student.patch_size=2"], "patch_size=4, but student"),
    ],
)
def test_a_missing_or_mismatched_tokenizer_is_refused_naming_the_key(tmp_path, overrides, match) -> None:
    path = save_tokenizer(
        VQTokenizer(patch_size=4, vocab_size=32, code_dim=8, hidden_dim=8), tmp_path / "t.safetensors"
    )
    cfg = load_config("demo_beit", [*TINY, *(o.replace("TOKENIZER", str(path)) for o in overrides)])
    with pytest.raises(ConfigError, match=match):
        beit.build_objective(cfg)


@pytest.mark.parametrize(
    "override, match",
    [
        ("beit.num_mask_patches=65", "beit.num_mask_patches"),
        ("beit.min_aspect=0", "beit.min_aspect"),
        ("beit.vocab_size=1", "beit.vocab_size"),
        ("crops.global_crops_size=30", "crops.global_crops_size"),
    ],
)
def test_the_section_rules_name_the_key(override, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("demo_beit", [*TINY, override])


def test_flops_count_the_whole_encoder_and_the_lm_head_on_masked_patches() -> None:
    cfg = load_config("demo_beit", RANDOM)
    flops = beit.training_flops(cfg)
    head = cfg.beit.num_mask_patches * cfg.student.embed_dim * cfg.beit.vocab_size
    assert flops["flops_per_image"] == round(2 * 3 * (vit_macs(cfg, cfg.crops.global_crops_size) + head))


def test_vitb16_beit_is_the_released_vit_base_command() -> None:
    """microsoft/unilm beit/README.md's ImageNet-1k command and run_beit_pretraining.py's defaults."""
    cfg = load_config("vitb16_beit")
    assert cfg.train.batch_size_per_gpu * 16 == 2048 and cfg.optim.scaling_rule == "none"
    assert (cfg.optim.base_lr, cfg.optim.min_lr, cfg.optim.warmup_start_lr) == (1.5e-3, 1e-5, 1e-6)
    assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.clip_grad) == (800, 10, 3.0)
    assert (cfg.optim.adamw_beta1, cfg.optim.adamw_beta2) == (0.9, 0.98)
    assert cfg.optim.weight_decay == cfg.optim.weight_decay_end == 0.05
    assert (cfg.student.drop_path_rate, cfg.student.layerscale, cfg.student.pos_embed) == (
        0.1,
        0.1,
        "shared_rel_pos_bias",
    )
    assert (cfg.beit.vocab_size, cfg.beit.num_mask_patches, cfg.beit.min_mask_patches) == (8192, 75, 16)
    assert (cfg.crops.global_crops_size // cfg.student.patch_size) ** 2 == 196
    with pytest.raises(ConfigError, match="missing value for 'beit.tokenizer'"):
        beit.build_objective(cfg)  # no tokenizer ships with the preset
