"""Frozen backbones for evaluation, from a training checkpoint or an exported file.

``load_any_backbone(path)`` accepts
- a training run directory (its ``latest`` checkpoint) or one ``iter_*`` checkpoint directory: the
  backbone is rebuilt from the checkpoint's ``config.yaml`` and given the weights of the method's
  evaluated network (its ``state.json`` method record: DINOv2's EMA teacher, the student of a method
  without a teacher), or of ``network="teacher"|"student"`` when asked;
- an exported backbone file (``.safetensors`` + JSON, or a DINOv2 ``.pth``), a timm / transformers hub
  folder (``config.json`` + ``model.safetensors``) or ``hf-hub:ORG/NAME``, via
  :func:`dinolite.export.load.load_backbone`.

Either way the module comes back in eval mode, without gradients, with a ``.spec``
(:class:`dinolite.export.spec.BackboneSpec`: patch size, training crop size, normalisation) that the
CLIs use for their default transforms, and with every weight finite: a NaN or inf parameter or buffer
is refused, naming it (:func:`dinolite.eval.finite.check_finite_module`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dinolite.checkpoint import resolve_checkpoint_dir
from dinolite.eval.finite import check_finite_module
from dinolite.export.consolidate import NETWORKS, consolidate_checkpoint
from dinolite.export.hub import download_hub_source, is_backbone_folder, is_hub_source
from dinolite.export.load import build_from_spec, load_backbone, load_state_dict_strict

REQUIRED_METHODS = ("forward_features", "get_intermediate_layers")


class BackboneError(ValueError):
    """A path that does not hold a usable dinolite/DINOv2 ViT backbone."""


def load_any_backbone(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    network: Optional[str] = None,
    student: Optional[str] = None,
) -> nn.Module:
    """Frozen ViT backbone from a checkpoint directory, an exported file, a hub folder or ``hf-hub:``.

    ``network``: ``"teacher"`` or ``"student"`` for a checkpoint (default: the method's evaluated
    network). An exported file holds one network; asking for another one is an error. ``student``: which
    student of a multi-student distillation checkpoint (required for one); for an export, the student it
    must hold.
    """
    if network is not None and network not in NETWORKS:
        raise BackboneError(f"network {network!r}: expected one of {', '.join(NETWORKS)}")
    if is_hub_source(path):
        return _checked(load_backbone(str(path), map_location="cpu"), path, network, student).to(map_location)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--backbone {path}: no such file or directory")
    if path.is_dir() and not is_backbone_folder(path):
        model = _from_checkpoint(path, network, student)
    else:
        model = load_backbone(path, map_location="cpu")
    return _checked(model, path, network, student).to(map_location)


def _checked(
    model: nn.Module, path: str | Path, network: Optional[str] = None, student: Optional[str] = None
) -> nn.Module:
    spec = getattr(model, "spec", None)
    source = getattr(spec, "source", None)
    if network is not None and source in NETWORKS and source != network:
        raise BackboneError(f"{path} holds the {source} backbone, not the {network} (re-export it with --network)")
    held = (getattr(spec, "extra", None) or {}).get("student")
    if student is not None and held != student:
        holds = f"student {held!r}" if held else "no student of a multi-student run"
        raise BackboneError(f"--student {student}: {path} holds {holds} (export that student with --student)")
    missing = [m for m in REQUIRED_METHODS if not hasattr(model, m)]
    if missing:
        raise BackboneError(f"{path}: loaded a {type(model).__name__}, which lacks {missing}; not a ViT backbone")
    check_finite_module(model, f"backbone {path}")
    model.requires_grad_(False)
    return model.eval()


def _from_checkpoint(checkpoint: Path, network: Optional[str], student: Optional[str] = None) -> nn.Module:
    try:
        exported = consolidate_checkpoint(checkpoint, model=network, student=student)
    except ValueError as exc:
        if "--student" not in str(exc):
            raise
        raise BackboneError(str(exc)) from exc
    model = build_from_spec(exported.spec)
    load_state_dict_strict(model, exported.backbone, origin=str(checkpoint))
    model.spec = exported.spec
    return model


def backbone_fingerprint(path: str | Path) -> str:
    """Identity of the weights behind ``path`` for feature-cache keys.

    Files: SHA-256 of the content (a re-export to the same name changes the key). Checkpoint
    directories and hub folders (``hf-hub:`` sources: their snapshot folder): the resolved path with size
    and mtime of every file in it.
    """
    digest = hashlib.sha256()
    if is_hub_source(path):  # the snapshot folder's name holds the commit the revision resolved to
        path = download_hub_source(str(path))
    path = Path(path).resolve()
    if path.is_file():
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    # A run or checkpoints folder: the checkpoint its weights come from, by the same rule as loading
    # (the latest pointer or a scan; never a path the pointer names outside the folder).
    target = path if is_backbone_folder(path) else resolve_checkpoint_dir(path)
    digest.update(str(target).encode())
    for item in sorted(p for p in Path(target).rglob("*") if p.is_file()):
        stat = item.stat()
        digest.update(f"{item.relative_to(target)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
