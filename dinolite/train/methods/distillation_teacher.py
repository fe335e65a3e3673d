"""The frozen teacher of distillation (``distillation.teacher_weights``): read, built, checked, fingerprinted.

Any source :func:`dinolite.load_backbone` takes: a dinolite run or checkpoint folder (its evaluated
network, or ``distillation.teacher_network``, with its DINO/iBOT heads), an export (with its heads when
exported ``--with-heads``), a timm / transformers folder, ``hf-hub:ORG/NAME`` or a DINOv2 ``.pth``.
DINOv2's and DINOv3's distillation read the teacher's targets through the teacher's own heads; a source
without heads (every released DINOv2 backbone) is refused unless ``distillation.missing_heads=random``
gives the teacher frozen, randomly initialised heads (a departure, stated in docs/distillation.md).
``teacher_weights=random`` builds a randomly initialised teacher of the student's architecture, as
DINOv3's ``distillation.checkpoint_path: ignore`` does, for tests and dry runs only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dinolite.config import Config, ConfigError
from dinolite.export.consolidate import consolidate_checkpoint
from dinolite.export.hub import is_backbone_folder, is_hub_source
from dinolite.export.load import PretrainedWeights, build_from_spec, load_pretrained, load_state_dict_strict
from dinolite.models import build_backbone, build_heads
from dinolite.models.heads import DINOHead, dinov2_head_state_dict

RANDOM_TEACHER = "random"
MISSING_HEADS_CHOICES = ("error", "random")
# The teacher's own randomly initialised parts (a random teacher, random heads) come from this offset of
# train.seed, so that they never consume the global stream the student is initialised from.
TEACHER_SEED_OFFSET = 7919


def read_teacher_weights(source: str, network: str | None) -> PretrainedWeights:
    """The teacher's backbone and, where the source holds them, its heads (keys ``dino_head.*``,
    ``ibot_head.*``): a run/checkpoint folder is consolidated ``with_heads``; anything else is read as
    ``student.pretrained_weights`` is (:func:`dinolite.export.load.load_pretrained`)."""
    key = f"distillation.teacher_weights={source!r}"
    try:
        if not is_hub_source(source) and Path(source).is_dir() and not is_backbone_folder(Path(source)):
            # Real tensors even inside a dry run's ``meta`` device context: DCP cannot load into meta ones.
            with torch.device("cpu"):
                return consolidate_checkpoint(source, model=network or None, with_heads=True)
        if network:
            raise ConfigError(f"{key}: distillation.teacher_network={network!r} applies to a dinolite run folder only")
        return load_pretrained(source)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key}: {exc}") from exc


def head_from_state(state: dict[str, torch.Tensor], origin: str) -> DINOHead:
    """A frozen :class:`DINOHead` sized from its weights (``mlp.*`` Linear layers, ``last_layer.weight``
    or DINOv2's ``last_layer.weight_g``/``weight_v``)."""
    state = dinov2_head_state_dict(state)
    if "last_layer.weight" not in state:
        raise ConfigError(f"{origin}: no last_layer.weight among {sorted(state)[:6]}")
    if "mlp.weight" in state:  # one Linear layer: ``mlp`` is the Linear itself
        linear = ["mlp.weight"]
    else:
        layers = [k for k in state if k.startswith("mlp.") and k.endswith(".weight")]
        linear = sorted(layers, key=lambda k: int(k.split(".")[1]))
    if not linear:
        raise ConfigError(f"{origin}: no mlp.*.weight: not a DINO head")
    first, last = state[linear[0]], state["last_layer.weight"]
    head = DINOHead(
        in_dim=first.shape[1],
        out_dim=last.shape[0],
        hidden_dim=first.shape[0] if len(linear) > 1 else 1,
        bottleneck_dim=last.shape[1],
        nlayers=len(linear),
    )
    load_state_dict_strict(head, state, origin=origin)
    return head


def _teacher_heads(cfg: Config, weights: PretrainedWeights, embed_dim: int, source: str) -> dict[str, nn.Module]:
    heads = weights.heads or {}
    parts = {
        name: {k[len(name) + 1 :]: v for k, v in heads.items() if k.startswith(name + ".")}
        for name in ("dino_head", "ibot_head")
    }
    if parts["dino_head"]:
        dino = head_from_state(parts["dino_head"], f"distillation.teacher_weights={source!r} (dino_head)")
        # A teacher trained with iBOT on its DINO head (ibot.separate_head=false) has no ibot_head.
        ibot = (
            head_from_state(parts["ibot_head"], f"distillation.teacher_weights={source!r} (ibot_head)")
            if parts["ibot_head"]
            else dino
        )
        return {"dino_head": dino, "ibot_head": ibot}
    if cfg.distillation.missing_heads != "random":
        raise ConfigError(
            f"distillation.teacher_weights={source!r} holds no DINO head (a backbone only, as every released "
            "DINOv2 model): distillation reads the teacher's targets through its heads. Pass a dinolite run "
            "folder or an export made --with-heads, or set distillation.missing_heads=random (frozen random heads)"
        )
    return dict(build_heads(cfg.dino, cfg.ibot, embed_dim))


def build_frozen_teacher(cfg: Config) -> nn.ModuleDict:
    """The frozen teacher ``{"backbone", "dino_head", "ibot_head"}`` (``ibot_head`` is ``dino_head`` for a
    teacher with a shared head): eval mode, no gradients, checked against the student's config."""
    source = cfg.distillation.teacher_weights
    if not source:
        raise ConfigError(
            "distillation.teacher_weights is empty: name the teacher to distil from (docs/distillation.md)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed + TEACHER_SEED_OFFSET)
        if source == RANDOM_TEACHER:
            backbone = build_backbone(cfg.student, img_size=cfg.crops.global_crops_size)
            heads = dict(build_heads(cfg.dino, cfg.ibot, backbone.embed_dim))
        else:
            weights = read_teacher_weights(source, cfg.distillation.teacher_network)
            backbone = build_from_spec(weights.spec)
            load_state_dict_strict(backbone, weights.backbone, origin=f"distillation.teacher_weights={source!r}")
            check_teacher_fits(cfg, weights, source)
            heads = _teacher_heads(cfg, weights, backbone.embed_dim, source)
    teacher = nn.ModuleDict({"backbone": backbone, **heads})
    check_prototypes(cfg, teacher, source)
    teacher.requires_grad_(False)
    return teacher.eval()


def check_teacher_fits(cfg: Config, weights: PretrainedWeights, source: str) -> None:
    """iBOT matches patch tokens position by position: the teacher's patch size must be the student's; and
    the teacher must see images normalised as it was trained."""
    spec = weights.spec
    key = f"distillation.teacher_weights={source!r}"
    if spec.patch_size != cfg.student.patch_size:
        raise ConfigError(
            f"{key}: the teacher's patch size {spec.patch_size} differs from student.patch_size="
            f"{cfg.student.patch_size}; iBOT compares patch tokens position by position"
        )
    for name in ("mean", "std"):
        ours, theirs = tuple(getattr(cfg.crops, name)), tuple(getattr(spec, name))
        if len(ours) != len(theirs) or any(abs(a - b) > 1e-6 for a, b in zip(ours, theirs)):
            raise ConfigError(
                f"{key}: the teacher was trained on images normalised with {name}={list(theirs)}, crops.{name}="
                f"{list(ours)}; set crops.{name} to the teacher's"
            )


def check_prototypes(cfg: Config, teacher: nn.ModuleDict, source: str) -> None:
    """The student's heads predict the teacher's prototypes: their counts must agree, naming both."""
    student_ibot = cfg.ibot.head_n_prototypes if cfg.ibot.separate_head else cfg.dino.head_n_prototypes
    for head, key, ours in (
        ("dino_head", "dino.head_n_prototypes", cfg.dino.head_n_prototypes),
        ("ibot_head", "ibot.head_n_prototypes" if cfg.ibot.separate_head else "dino.head_n_prototypes", student_ibot),
    ):
        theirs = teacher[head].out_dim
        if theirs != ours:
            raise ConfigError(
                f"distillation.teacher_weights={source!r}: the teacher's {head} has {theirs} prototypes, {key}={ours}; "
                f"the student's head must predict the teacher's prototypes (set {key}={theirs})"
            )


def teacher_fingerprint(teacher: nn.Module) -> torch.Tensor:
    """SHA-256 of every tensor of ``teacher`` (names, dtypes, shapes, bytes), as 32 uint8: a checkpoint
    records it, and a resume against other teacher weights is refused."""
    digest = hashlib.sha256()
    state = teacher.state_dict(keep_vars=False)
    if any(value.is_meta for value in state.values()):  # a dry run builds on ``meta``: there are no bytes
        return torch.zeros(32, dtype=torch.uint8)
    for name, value in sorted(state.items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8).clone()


def describe(fingerprint: Any) -> str:
    """The hex digest of a :func:`teacher_fingerprint`."""
    return bytes(torch.as_tensor(fingerprint, dtype=torch.uint8).tolist()).hex()
