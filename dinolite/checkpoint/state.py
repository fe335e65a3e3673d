"""What a checkpoint holds besides the DCP mechanics: RNG streams as tensors, and the state trees.

``_collect`` turns an ``app_state`` (objective, optimizer, Stateful entries) into a DCP tree of tensors and
a JSON tree of everything else; ``capture_rng_state`` / ``restore_rng_state`` keep every RNG stream as
tensors (no pickle). Split out of :mod:`dinolite.checkpoint.manager`, which re-exports the public names.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict

from dinolite.checkpoint.errors import CheckpointError

# --------------------------------------------------------------------------------------------------
# RNG states as tensors (no pickle)
# --------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG streams (python ``random``, numpy's global, torch CPU, current CUDA device)."""
    version, mt_words, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    if np_name != "MT19937":
        raise CheckpointError(f"numpy's global RNG is {np_name}; only MT19937 can be checkpointed")
    state = {
        "python_version": torch.tensor(version, dtype=torch.int64),
        "python_state": torch.tensor(mt_words, dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        "python_has_gauss": torch.tensor(gauss is not None),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": torch.tensor(np_pos, dtype=torch.int64),
        "numpy_has_gauss": torch.tensor(int(np_has_gauss), dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    gauss = float(state["python_gauss"][0]) if bool(state["python_has_gauss"]) else None
    random.setstate((int(state["python_version"]), tuple(int(w) for w in state["python_state"].tolist()), gauss))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


# --------------------------------------------------------------------------------------------------
# State trees: tensors go to DCP, everything else to state.json
# --------------------------------------------------------------------------------------------------

METHOD_KEY = "method"
# What a checkpoint written before the method record existed holds: every such run was DINOv2's, whose
# evaluated network is the EMA teacher (heads are then read from the checkpoint's keys).
LEGACY_METHOD = {"name": "dinov2", "eval_network": "teacher"}
MODEL_KEY = "model"
OPTIMIZER_KEY = "optimizer"
EXTRA_KEY = "extra"
APP_KEY = "app"


def _split_tree(tree: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a nested dict into (tensor leaves, JSON leaves) of the same nesting; lists are JSON leaves."""
    tensors: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{where}.{key}"
        if isinstance(value, Mapping):
            tensors[key], plain[key] = _split_tree(value, name)
        elif isinstance(value, torch.Tensor):
            tensors[key] = value
        else:
            try:
                json.dumps(value)
            except TypeError:
                raise CheckpointError(
                    f"checkpoint entry {name!r} is a {type(value).__name__}: only tensors and JSON values are stored"
                ) from None
            plain[key] = value
    return tensors, plain


def _merge_trees(tensors: Mapping[str, Any], plain: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = dict(plain)
    for key, value in tensors.items():
        merged[key] = _merge_trees(value, plain.get(key, {})) if isinstance(value, Mapping) else value
    return merged


def _module_and_optimizer(app_state: Mapping[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    model = app_state.get(MODEL_KEY)
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"app_state[{MODEL_KEY!r}] must be the objective (an nn.Module), got {type(model).__name__}"
        )
    optimizer = app_state.get(OPTIMIZER_KEY)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise CheckpointError(f"app_state[{OPTIMIZER_KEY!r}] must be a torch optimizer, got {type(optimizer).__name__}")
    return model, optimizer


def _stateful_entries(app_state: Mapping[str, Any]) -> dict[str, Any]:
    entries = {}
    for name, obj in app_state.items():
        if name in (MODEL_KEY, OPTIMIZER_KEY):
            continue
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise CheckpointError(f"app_state[{name!r}] ({type(obj).__name__}) has no state_dict/load_state_dict")
        entries[name] = obj
    return entries


def _extra_state(model: nn.Module) -> dict[str, torch.Tensor]:
    getter = getattr(model, "extra_state", None)
    extra = dict(getter()) if callable(getter) else {}
    for key, value in extra.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"objective.extra_state()[{key!r}] is {type(value).__name__}; only tensors are saved")
    return extra


def _collect(app_state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DCP tree of tensors, JSON tree) for ``app_state``.

    DCP tree: ``model`` (the objective's state dict: ``student.*``, ``teacher.*``, loss buffers - FSDP2
    adds no prefixes, so ``teacher.backbone.*`` is DINOv2's layout), ``optimizer.state`` (AdamW moments
    and step counters keyed by parameter name), ``extra`` (``objective.extra_state()``, the centering
    buffers) and ``app.<name>`` (tensor leaves of every other Stateful entry). Its JSON leaves go to the
    JSON tree.
    """
    model, optimizer = _module_and_optimizer(app_state)
    model_sd, optim_sd = get_state_dict(model, [optimizer] if optimizer is not None else [])
    tree: dict[str, Any] = {MODEL_KEY: model_sd, EXTRA_KEY: _extra_state(model), APP_KEY: {}}
    _, stray = _split_tree(model_sd, MODEL_KEY)
    if stray:
        raise CheckpointError(f"the objective's state dict holds non-tensor entries: {sorted(stray)}")
    if optimizer is not None:
        tree[OPTIMIZER_KEY] = {"state": optim_sd["state"]}
    plain: dict[str, Any] = {}
    for name, obj in _stateful_entries(app_state).items():
        tree[APP_KEY][name], plain[name] = _split_tree(obj.state_dict(), name)
    return tree, plain


def _flat_tensors(tree: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat_tensors(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
