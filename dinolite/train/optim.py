"""Optimizer parameter groups for the student (layer-wise lr decay, weight-decay rules, frozen prototypes) and
the optimizer itself (AdamW, SGD or LARS: ``optim.optimizer``).

Follows DINOv2's ``get_params_groups_with_decay`` / ``fuse_params_groups`` (Oquab et al. 2023), itself
from BEiT (Bao et al. 2022) for layer-wise lr decay, with one deliberate change (see below).

For a backbone of ``L`` blocks each parameter gets a layer id:

* ``patch_embed.*``, ``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``: 0
* ``blocks.i.*``: ``i + 1``
* everything else (final ``norm``, and every parameter of the heads): ``L + 1``

and ``lr_multiplier = layerwise_decay ** (L + 1 - layer_id)``, times ``patch_embed_lr_mult`` (0.2) for
``patch_embed.*``. ``wd_multiplier`` is 0 for biases, norms (any name containing ``norm``), LayerScale
gammas (``.gamma``) and for the tokens and ``pos_embed``, 1 otherwise. Departure: DINOv2 applies weight
decay to ``cls_token``/``pos_embed``/``register_tokens``/``mask_token``; we do not (as DINO, iBOT and
most ViT recipes, since decaying learned embeddings towards 0 only fights the signal).
The prototype layers (``last_layer`` of the heads) are flagged ``is_last_layer`` so that a method can
freeze them (DINO: lr 0 during the first epoch).

Membership is decided from parameter *names*, and for the released rules also from the number of
dimensions, which an FSDP2 ``DTensor`` shard reports as the full parameter's (``fully_shard`` keeps the
original names), so groups are identical for plain tensors and shards.

**Released recipes** (docs/faithfulness.md) are options of the ``optim`` section, read by
:class:`GroupRules`:

* ``decay_rule``: ``dinolite`` (the rule above), ``all`` (every parameter, SimSiam's SGD) or ``non_1d``
  (every parameter of two or more dimensions that is not a ``.bias``: Barlow Twins, DirectCLR, MSN,
  I-JEPA, SimMIM); ``no_decay`` names more parameters or modules to exempt (MSN: ``prototypes``; SimMIM:
  ``backbone.cls_token``, ``backbone.pos_embed``), matched as whole dotted components of the name.
* ``lr_1d_mult``: a further lr multiplier for 1-D parameters (Barlow Twins: biases and norms at 0.0048
  against 0.2 for weights, i.e. 0.024).
* ``fixed_lr_modules``: student modules whose lr stays at the peak lr (SimSiam's predictor); their groups
  carry ``fixed_lr: True`` and :func:`apply_schedules` gives them ``peak_lr * lr_multiplier``.
* ``lars_exclude_1d`` (LARS only): 1-D parameters skip the trust ratio (``lars_adaptation: False``).

The default values add no key to any group, so the DINOv2 path (and its checkpoints) are unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinolite.config import ConfigError
from dinolite.fsdp.sharding import is_student_set
from dinolite.train.lars import LARS

_EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed", "register_tokens", "mask_token")
_TOKEN_NAMES = ("cls_token", "pos_embed", "register_tokens", "mask_token")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def _backbone_depth(backbone_names: Iterable[str]) -> int:
    ids = [int(m.group(1)) for name in backbone_names if (m := _BLOCK_RE.match(name))]
    return max(ids) + 1 if ids else 0


def _layer_id(backbone_name: str, depth: int) -> int:
    """Layer id of a backbone parameter (name relative to the backbone)."""
    first = backbone_name.split(".", 1)[0]
    if first in _EMBEDDING_NAMES:
        return 0
    match = _BLOCK_RE.match(backbone_name)
    if match:
        return int(match.group(1)) + 1
    return depth + 1


def _no_weight_decay(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return name.endswith(".bias") or "norm" in name or leaf == "gamma" or leaf in _TOKEN_NAMES


OPTIMIZERS = ("adamw", "sgd", "lars")
DECAY_RULES = ("dinolite", "all", "non_1d")


def _names_any(name: str, keys: Sequence[str]) -> bool:
    """Whether one of ``keys`` is a whole dotted component (or run of components) of ``name``."""
    dotted = f".{name}."
    return any(f".{key}." in dotted for key in keys)


@dataclass(frozen=True)
class GroupRules:
    """The released-recipe options of the module docstring (defaults: dinolite's rules, no extra key)."""

    decay_rule: str = "dinolite"
    no_decay: tuple[str, ...] = ()
    lr_1d_mult: float = 1.0
    fixed_lr_modules: tuple[str, ...] = ()
    lars_exclude_1d: bool | None = None  # None: not LARS (no ``lars_adaptation`` key)

    def __post_init__(self) -> None:
        if self.decay_rule not in DECAY_RULES:
            raise ValueError(
                f"invalid value for 'optim.decay_rule': {self.decay_rule!r}; expected one of {DECAY_RULES}"
            )
        if self.lr_1d_mult < 0:
            raise ValueError(f"invalid value for 'optim.lr_1d_mult': {self.lr_1d_mult}; must be >= 0")

    @classmethod
    def from_config(cls, optim_cfg: Any) -> GroupRules:  # noqa: ANN401 - an OptimConfig or alike
        return cls(
            decay_rule=optim_cfg.decay_rule,
            no_decay=tuple(optim_cfg.no_decay),
            lr_1d_mult=optim_cfg.lr_1d_mult,
            fixed_lr_modules=tuple(optim_cfg.fixed_lr_modules),
            lars_exclude_1d=optim_cfg.lars_exclude_1d if optim_cfg.optimizer == "lars" else None,
        )

    def decays(self, name: str, param: torch.Tensor) -> bool:
        """Whether ``name`` (relative to the student) is decayed."""
        if _names_any(name, self.no_decay):
            return False
        if self.decay_rule == "all":
            return True
        if self.decay_rule == "non_1d":
            return param.ndim > 1 and not name.endswith(".bias")
        return not _no_weight_decay(name)

    def extra(self, name: str, param: torch.Tensor) -> dict[str, Any]:
        """The group keys beyond the defaults: ``fixed_lr`` and ``lars_adaptation``, only where they apply."""
        keys: dict[str, Any] = {}
        if name.split(".", 1)[0] in self.fixed_lr_modules:
            keys["fixed_lr"] = True
        if self.lars_exclude_1d is not None:
            keys["lars_adaptation"] = not (self.lars_exclude_1d and param.ndim == 1)
        return keys


def get_param_groups(
    student: nn.Module,
    layerwise_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
    backbone_key: str = "backbone",
    rules: GroupRules | None = None,
) -> list[dict]:
    """Optimiser groups for ``student`` (an ``nn.ModuleDict`` with ``"backbone"`` and the heads).

    Parameters with identical ``(lr_multiplier, wd_multiplier, is_last_layer)`` (and extra keys) are fused
    into one group. Each group: ``params`` (list), ``lr_multiplier``, ``wd_multiplier``, ``is_last_layer``,
    ``names``, and where ``rules`` call for them ``fixed_lr`` / ``lars_adaptation``. A parameter shared by two
    sub-modules (``ibot_head`` is ``dino_head``) appears once; parameters with ``requires_grad=False`` are
    left out. ``rules``: the released-recipe options (module docstring; default: dinolite's); a
    ``fixed_lr_modules`` entry that names no student module is an error.

    A set of students (multi-student distillation: ``student`` maps names to such dicts) gets each student's
    groups, by its own depth, never fused across students: ``names`` prefixed ``<student>.``, and ``student``.
    """
    rules = rules or GroupRules()
    if is_student_set(student):  # several students (multi-student distillation): each its own groups
        return [
            {**group, "names": [f"{name}.{n}" for n in group["names"]], "student": name}
            for name, member in student.items()
            for group in get_param_groups(member, layerwise_decay, patch_embed_lr_mult, backbone_key, rules)
        ]
    children = sorted(name for name, _ in student.named_children())
    unknown = sorted(set(rules.fixed_lr_modules) - set(children))
    if unknown:
        raise ConfigError(
            f"invalid value for 'optim.fixed_lr_modules': {unknown} name no student module; it has {children}"
        )
    if not 0.0 < layerwise_decay <= 1.0:
        raise ValueError(f"invalid value for 'optim.layerwise_decay': {layerwise_decay}; expected 0 < decay <= 1")
    if patch_embed_lr_mult < 0:
        raise ValueError(f"invalid value for 'optim.patch_embed_lr_mult': {patch_embed_lr_mult}; must be >= 0")
    prefix = backbone_key + "."
    named = [(name, p) for name, p in student.named_parameters() if p.requires_grad]  # de-duplicated by torch
    depth = _backbone_depth(name[len(prefix) :] for name, _ in named if name.startswith(prefix))

    fused: dict[tuple[Any, ...], dict] = {}
    seen: set[int] = set()
    for name, param in named:
        if id(param) in seen:
            continue
        seen.add(id(param))
        if name.startswith(prefix):
            inner = name[len(prefix) :]
            lr_mult = layerwise_decay ** (depth + 1 - _layer_id(inner, depth))
            if inner.startswith("patch_embed."):
                lr_mult *= patch_embed_lr_mult
        else:
            lr_mult = 1.0  # heads sit above the last block: layer id depth + 1
        if param.ndim == 1:
            lr_mult *= rules.lr_1d_mult
        wd_mult = 1.0 if rules.decays(name, param) else 0.0
        is_last_layer = ".last_layer." in f".{name}"
        extra = rules.extra(name, param)
        key = (lr_mult, wd_mult, is_last_layer, *sorted(extra.items()))
        group = fused.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": is_last_layer,
                **extra,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(fused.values())


# optim.adamw_kernel -> torch.optim.AdamW's keywords ("auto": PyTorch's own choice, foreach on CUDA only)
ADAMW_KERNELS: dict[str, dict[str, bool]] = {
    "auto": {},
    "for_loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def build_optimizer(
    groups: list[dict], beta1: float = 0.9, beta2: float = 0.999, kernel: str = "auto"
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (from :func:`get_param_groups`); lr and weight decay start at 0 and are set
    every iteration by :func:`apply_schedules`. ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``
    ride along in ``optimizer.param_groups``; ``names`` is left out so checkpoints stay small. ``kernel``
    (``optim.adamw_kernel``, :data:`ADAMW_KERNELS`): how the update runs; on CPU the per-tensor loop
    (``auto``) launches ~10 small ops per parameter, ``foreach`` / ``fused`` batch them."""
    if kernel not in ADAMW_KERNELS:
        raise ValueError(
            f"invalid value for 'optim.adamw_kernel': {kernel!r}; expected one of {', '.join(ADAMW_KERNELS)}"
        )
    prepared = [
        {**{k: v for k, v in group.items() if k != "names"}, "lr": 0.0, "weight_decay": 0.0} for group in groups
    ]
    return torch.optim.AdamW(prepared, lr=0.0, betas=(beta1, beta2), weight_decay=0.0, **ADAMW_KERNELS[kernel])


def build_configured_optimizer(groups: list[dict], optim_cfg: Any) -> torch.optim.Optimizer:  # noqa: ANN401
    """The optimizer ``optim.optimizer`` names over ``groups``, lr and weight decay at 0 (set every iteration):

    * ``adamw``: :func:`build_optimizer` (``optim.adamw_beta1`` / ``adamw_beta2``);
    * ``sgd``: ``torch.optim.SGD`` with ``optim.momentum`` and ``optim.nesterov`` (SimSiam: 0.9, no Nesterov);
    * ``lars``: :class:`dinolite.train.lars.LARS` with ``optim.momentum`` and ``optim.lars_eta`` (groups from
      :func:`get_param_groups` with ``GroupRules.from_config`` carry ``lars_adaptation``).
    """
    name = optim_cfg.optimizer
    if name == "adamw":
        return build_optimizer(groups, optim_cfg.adamw_beta1, optim_cfg.adamw_beta2, optim_cfg.adamw_kernel)
    prepared = [
        {**{k: v for k, v in group.items() if k != "names"}, "lr": 0.0, "weight_decay": 0.0} for group in groups
    ]
    if name == "sgd":
        return torch.optim.SGD(prepared, lr=0.0, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov)
    if name == "lars":
        return LARS(prepared, lr=0.0, momentum=optim_cfg.momentum, eta=optim_cfg.lars_eta)
    raise ValueError(f"invalid value for 'optim.optimizer': {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def optimizer_for(student: nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:  # noqa: ANN401
    """The optimizer the ``optim`` section describes over ``student``: :func:`get_param_groups` with the
    section's layer-wise decay, patch-embedding multiplier and :class:`GroupRules`, then
    :func:`build_configured_optimizer`."""
    rules = GroupRules.from_config(optim_cfg)
    groups = get_param_groups(student, optim_cfg.layerwise_decay, optim_cfg.patch_embed_lr_mult, rules=rules)
    return build_configured_optimizer(groups, optim_cfg)


def apply_schedules(
    optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, peak_lr: float | None = None
) -> None:
    """Set each group's ``lr = lr * lr_multiplier`` and ``weight_decay = weight_decay * wd_multiplier``;
    a group flagged ``fixed_lr`` (``optim.fixed_lr_modules``) gets ``peak_lr * lr_multiplier`` instead.

    A method may then adjust groups for the step (DINO's frozen prototypes get lr 0 in its
    ``after_backward`` hook, found by their ``is_last_layer`` flag).
    """
    for group in optimizer.param_groups:
        if group.get("fixed_lr", False):
            if peak_lr is None:
                raise ValueError("a group has fixed_lr (optim.fixed_lr_modules) but apply_schedules got no peak_lr")
            group["lr"] = peak_lr * group.get("lr_multiplier", 1.0)
        else:
            group["lr"] = lr * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)
