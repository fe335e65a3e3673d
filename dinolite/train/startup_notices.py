"""What a command says at start-up about a config that does something the user may not expect.

A preset may set the model's size explicitly (``demo``: ``student.embed_dim: 96``, ``depth: 4``). An
override of ``student.arch`` alone changes the arch's name, but those explicit fields still win over the
new arch's sizes, so ``--config demo student.arch=vit_small`` builds the demo's 96-wide, 4-deep model.
That is the documented merge order (a set field overrides the arch), and a run may want it; a silent
surprise it must not be. :func:`stale_arch_fields` names each such field, one line per key, with the
value kept and the arch's value.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from dinolite.config import CONFIG_DIR, Config, load_config
from dinolite.models.backbone_factory import ARCHITECTURES

# The fields of student.arch that a config may set explicitly (null takes the arch's value).
ARCH_FIELDS = ("embed_dim", "depth", "num_heads")


def _overridden_keys(overrides: Sequence[str]) -> set[str]:
    return {item.partition("=")[0].strip() for item in overrides}


def stale_arch_fields(config: str | Path, overrides: Sequence[str], cfg: Config) -> list[str]:
    """One line per explicit ``student.<field>`` of ``config`` that an override of ``student.arch`` left in
    place (the override did not set the field too); empty when no override changes the arch."""
    given = _overridden_keys(overrides)
    if "student.arch" not in given or cfg.student.arch not in ARCHITECTURES:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the config's own notices were shown when it was loaded
        base = load_config(config, [item for item in overrides if not item.strip().startswith("student.")])
    if base.student.arch == cfg.student.arch:
        return []
    arch_values = ARCHITECTURES[cfg.student.arch]
    lines = []
    for field in ARCH_FIELDS:
        kept = getattr(cfg.student, field)
        if f"student.{field}" in given or kept is None or kept == arch_values[field]:
            continue
        lines.append(
            f"student.{field}={kept} from {config} is kept although student.arch={cfg.student.arch} has "
            f"{field} {arch_values[field]} (the preset sets it explicitly; pass student.{field}=null for "
            f"{cfg.student.arch}'s value)"
        )
    return lines


def user_set_keys(config: str | Path, overrides: Sequence[str]) -> set[str]:
    """The dotted keys the user set: the overrides', and a config file's of their own (not a shipped
    preset, whose values are defaults to be read from pretrained weights where those say otherwise)."""
    keys = _overridden_keys(overrides)
    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.resolve().parent != CONFIG_DIR.resolve() and path.is_file():
        keys |= _flat_keys(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    return keys


def _flat_keys(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return {prefix[:-1]} if prefix else set()
    return set().union(*(_flat_keys(value, f"{prefix}{key}.") for key, value in node.items())) if node else set()
