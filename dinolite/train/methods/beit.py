"""BEiT: predict the discrete visual tokens of block-wise masked patches.

Bao, Dong, Piao & Wei 2022, "BEiT: BERT Pre-Training of Image Transformers" (ICLR). Per image: one crop;
a block-wise mask of ``beit.num_mask_patches`` patches (the release's ``masking_generator.py`` rule:
:class:`dinolite.data.masking.MaskingGenerator` with ``stop_below_min_block=False``); masked patches enter
the ViT as its learnable mask token; a linear LM head on the final-norm patch tokens of the masked
positions predicts the token that a frozen image tokenizer gives each patch, with cross-entropy
(:class:`dinolite.losses.BEiTLoss`). The tokenizer is an input (``beit.tokenizer``: a checkpoint in the
format of :mod:`dinolite.models.vq_tokenizer`, e.g. one ``dinolite-train-tokenizer`` trained); it is
frozen, held by the objective (so a checkpoint carries it and a resume is bitwise) and its file's SHA-256
is recorded in the run's extra state. No teacher; the student backbone is evaluated (average-pooled patch
tokens, as BEiT's linear probe).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigError, ConfigSection, check_ranges
from dinolite.data.masked_collate import SingleViewAugmentation, collate_beit
from dinolite.data.masking import MaskingGenerator
from dinolite.losses import BEiTLoss
from dinolite.models.vq_tokenizer import VQTokenizer, file_sha256, freeze, load_tokenizer
from dinolite.monitor.collapse_rules import one_direction
from dinolite.train.methods import simmim
from dinolite.train.methods.masked_common import checked, embed_dim, flops_record, vit_macs
from dinolite.train.methods.registry import MethodSpec, register_method
from dinolite.train.objective import ObjectiveOutput, SSLObjective
from dinolite.train.pretrained import build_student_backbone

RANDOM_TOKENIZER = "random"


@dataclass
class BEiTConfig:
    """BEiT's section (``train.method: beit``). Defaults: the release's ViT-B/16 pre-training at 224 px
    (``run_beit_pretraining.py``: 75 masked of 196 patches, blocks of >= 16 patches, aspect in [0.3, 1/0.3])."""

    # path to the tokenizer checkpoint (dinolite.models.vq_tokenizer's format); "random": a randomly
    # initialised tokenizer seeded by train.seed (tests only: its tokens carry no meaning)
    tokenizer: str = ""
    vocab_size: int = 8192  # LM-head classes; must equal the tokenizer's vocab_size
    num_mask_patches: int = 75  # masked patches per image (the release: 75 of 196)
    min_mask_patches: int = 16  # smallest block (--min_mask_patches_per_block)
    min_aspect: float = 0.3  # blocks' aspect ratio in [min_aspect, 1 / min_aspect]
    # dinolite-train-tokenizer's VQ-VAE (the tokenizer it writes to beit.tokenizer):
    tokenizer_code_dim: int = 32  # code width
    tokenizer_hidden_dim: int = 64  # conv width of encoder and decoder
    tokenizer_iterations: int = 600  # AdamW steps
    tokenizer_lr: float = 2.0e-3  # AdamW learning rate (constant, no weight decay)


def validate_beit(beit: BEiTConfig, cfg: Config) -> None:
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    check_ranges(
        cfg,
        (
            ("beit.vocab_size", 2, math.inf, True, False),
            ("beit.num_mask_patches", 1, grid * grid, True, False),
            ("beit.min_mask_patches", 1, math.inf, True, False),
            ("beit.min_aspect", 0.0, 1.0, False, True),
            ("beit.tokenizer_iterations", 1, math.inf, True, False),
            ("beit.tokenizer_lr", 0.0, math.inf, False, False),
        ),
    )
    if cfg.crops.global_crops_size % cfg.student.patch_size:
        raise ConfigError(
            f"invalid value for 'crops.global_crops_size': {cfg.crops.global_crops_size} is not a multiple of "
            f"student.patch_size={cfg.student.patch_size} (BEiT tokenizes each patch)"
        )


def _sha256_tensor(hexdigest: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(hexdigest)), dtype=torch.uint8)


class BEiTObjective(SSLObjective):
    """Student = ``{backbone, lm_head}``; no teacher; ``tokenizer`` frozen (in the checkpoint, never trained)."""

    def __init__(self, backbone: nn.Module, lm_head: nn.Linear, tokenizer: VQTokenizer, tokenizer_sha256: str) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone, "lm_head": lm_head})
        self.teacher = nn.ModuleDict()
        self.tokenizer = freeze(tokenizer)
        self.tokenizer_sha256 = tokenizer_sha256
        self.loss = BEiTLoss()

    def train(self, mode: bool = True) -> BEiTObjective:
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode
        return self

    def forward(self, batch: dict[str, Any], iteration: int) -> ObjectiveOutput:
        images, masks = batch["images"], batch["masks"]
        tokens = self.tokenizer.tokenize(images)
        out = self.student["backbone"].forward_features(images, masks=masks)
        patch_tokens = out["x_norm_patchtokens"]
        logits = self.student["lm_head"](patch_tokens[masks])  # the head runs on the masked patches only
        loss = self.loss(logits, tokens[masks])
        accuracy = (logits.detach().argmax(dim=-1) == tokens[masks]).float().mean()
        diagnostics = {"patch_features": patch_tokens.mean(dim=1).detach(), "cls": out["x_norm_clstoken"].detach()}
        return ObjectiveOutput(
            loss=loss, terms={"beit_ce": loss, "beit_token_accuracy": accuracy}, diagnostics=diagnostics
        )

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"tokenizer_sha256": _sha256_tensor(self.tokenizer_sha256)}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        recorded = bytes(state["tokenizer_sha256"].tolist()).hex()
        if recorded != self.tokenizer_sha256:
            raise ConfigError(
                f"invalid value for 'beit.tokenizer': its file's SHA-256 is {self.tokenizer_sha256}, but the run "
                f"being resumed was trained with tokenizer {recorded}; resume with the run's tokenizer"
            )


def build_tokenizer(cfg: Config) -> tuple[VQTokenizer, str]:
    """``beit.tokenizer``'s frozen tokenizer and its SHA-256 (of the file; of a label for ``random``)."""
    path = cfg.beit.tokenizer
    if not path:
        raise ConfigError(
            "missing value for 'beit.tokenizer': the path of a tokenizer checkpoint (dinolite-train-tokenizer "
            "trains one; docs/methods_masked.md, BEiT)"
        )
    if path == RANDOM_TOKENIZER:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.train.seed)
        tokenizer = VQTokenizer(
            cfg.student.patch_size, cfg.beit.vocab_size, cfg.beit.tokenizer_code_dim, cfg.beit.tokenizer_hidden_dim
        )
        torch.random.set_rng_state(generator_state)
        label = f"random:{cfg.train.seed}:{cfg.student.patch_size}:{cfg.beit.vocab_size}".encode()
        return tokenizer, hashlib.sha256(label).hexdigest()
    try:
        tokenizer = load_tokenizer(path)
    except ValueError as exc:
        raise ConfigError(f"invalid value for 'beit.tokenizer': {exc}") from exc
    for key, expected in (("patch_size", cfg.student.patch_size), ("vocab_size", cfg.beit.vocab_size)):
        if getattr(tokenizer, key) != expected:
            owner = "student.patch_size" if key == "patch_size" else "beit.vocab_size"
            raise ConfigError(
                f"invalid value for 'beit.tokenizer': {path} has {key}={getattr(tokenizer, key)}, but {owner}={expected}"
            )
    return tokenizer, file_sha256(path)


def build_objective(cfg: Config) -> BEiTObjective:
    tokenizer, sha256 = build_tokenizer(cfg)
    backbone = build_student_backbone(cfg)
    lm_head = nn.Linear(backbone.embed_dim, cfg.beit.vocab_size)
    # the release's init: normal std 0.02 truncated at +-1 std (modeling_pretrain.py's trunc_normal_), bias 0
    nn.init.trunc_normal_(lm_head.weight, std=0.02, a=-0.02, b=0.02)
    nn.init.zeros_(lm_head.bias)
    return BEiTObjective(backbone, lm_head, tokenizer, sha256)


def build_transform(cfg: Config) -> SingleViewAugmentation:
    """SimMIM's view (one RandomResizedCrop of ``crops.global_crops_*`` + flip, no colour ops); the tokenizer reads
    the same crop."""
    return simmim.build_transform(cfg)


def mask_generator(cfg: Config) -> MaskingGenerator:
    """BEiT's block-wise masking on the student's patch grid (largest block: all the masked patches)."""
    grid = cfg.crops.global_crops_size // cfg.student.patch_size
    return MaskingGenerator(
        (grid, grid),
        max_num_patches=cfg.beit.num_mask_patches,
        min_num_patches=cfg.beit.min_mask_patches,
        min_aspect=cfg.beit.min_aspect,
        stop_below_min_block=False,
    )


def build_collate(cfg: Config) -> Callable[..., dict[str, Any]]:
    generator = checked("beit", lambda: mask_generator(cfg))
    return functools.partial(collate_beit, mask_generator=generator, num_masking_patches=cfg.beit.num_mask_patches)


def training_flops(cfg: Config) -> dict[str, Any]:
    """Encoder on every patch (masked ones as the mask token) + the LM head on the masked patches, forward +
    backward; the frozen tokenizer's forward is not counted."""
    head = cfg.beit.num_mask_patches * embed_dim(cfg) * cfg.beit.vocab_size
    return flops_record(vit_macs(cfg, cfg.crops.global_crops_size) + head, 0.0, cfg)


def head_names(cfg: Config) -> tuple[str, ...]:
    return ("lm_head",)


METHOD = register_method(
    MethodSpec(
        name="beit",
        paper="Bao et al. 2022, BEiT (cross-entropy on a frozen tokenizer's tokens of block-masked patches)",
        build_objective=build_objective,
        build_transform=build_transform,
        build_collate=build_collate,
        training_flops=training_flops,
        eval_network="student",
        eval_features="avgpool",  # BEiT's linear probe reads average-pooled patch tokens
        head_names=head_names,
        demo_preset="demo_beit",
        monitor_embeddings={"patch_features": "backbone", "cls": "student_backbone"},
        # token targets cannot collapse the backbone by themselves; a dead backbone is still worth flagging
        watchdog_thresholds=(one_direction("backbone", after_iteration=60, patience=3),),
        config_sections=(ConfigSection("beit", BEiTConfig, validate_beit),),
        reads_cls_token=False,  # the loss reads the masked patches; the CLS feature is only monitored
    )
)
