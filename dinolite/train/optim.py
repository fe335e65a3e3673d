"""AdamW parameter groups for the student: layer-wise lr decay, no-decay parameters, frozen prototypes.

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

Membership is decided from parameter *names* only (never shapes), so it is identical for plain tensors
and FSDP2 ``DTensor`` shards (``fully_shard`` keeps the original names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

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


def get_param_groups(
    student: nn.Module,
    layerwise_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
    backbone_key: str = "backbone",
) -> list[dict]:
    """Optimiser groups for ``student`` (an ``nn.ModuleDict`` with ``"backbone"`` and the heads).

    Parameters with identical ``(lr_multiplier, wd_multiplier, is_last_layer)`` are fused into one group.
    Each group: ``params`` (list), ``lr_multiplier``, ``wd_multiplier``, ``is_last_layer`` and ``names``.
    A parameter shared by two sub-modules (``ibot_head`` is ``dino_head``) appears once; parameters with
    ``requires_grad=False`` are left out.
    """
    if not 0.0 < layerwise_decay <= 1.0:
        raise ValueError(f"invalid value for 'optim.layerwise_decay': {layerwise_decay}; expected 0 < decay <= 1")
    if patch_embed_lr_mult < 0:
        raise ValueError(f"invalid value for 'optim.patch_embed_lr_mult': {patch_embed_lr_mult}; must be >= 0")
    prefix = backbone_key + "."
    named = [(name, p) for name, p in student.named_parameters() if p.requires_grad]  # de-duplicated by torch
    depth = _backbone_depth(name[len(prefix) :] for name, _ in named if name.startswith(prefix))

    fused: dict[tuple[float, float, bool], dict] = {}
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
        wd_mult = 0.0 if _no_weight_decay(name) else 1.0
        is_last_layer = ".last_layer." in f".{name}"
        key = (lr_mult, wd_mult, is_last_layer)
        group = fused.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": is_last_layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(fused.values())


def build_optimizer(groups: list[dict], beta1: float = 0.9, beta2: float = 0.999) -> torch.optim.AdamW:
    """AdamW over ``groups`` (from :func:`get_param_groups`); lr and weight decay start at 0 and are set
    every iteration by :func:`apply_schedules`. ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer``
    ride along in ``optimizer.param_groups``; ``names`` is left out so checkpoints stay small."""
    prepared = [
        {**{k: v for k, v in group.items() if k != "names"}, "lr": 0.0, "weight_decay": 0.0} for group in groups
    ]
    return torch.optim.AdamW(prepared, lr=0.0, betas=(beta1, beta2), weight_decay=0.0)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set each group's ``lr = lr * lr_multiplier`` and ``weight_decay = weight_decay * wd_multiplier``.

    A method may then adjust groups for the step (DINO's frozen prototypes get lr 0 in its
    ``after_backward`` hook, found by their ``is_last_layer`` flag).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)
