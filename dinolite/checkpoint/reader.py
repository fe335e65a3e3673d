"""Reading checkpoints back: their state file, the method record, DCP loads into a live ``app_state``
(resharding across world sizes), and the single-process consolidation that ``eval`` and ``export`` use.

Nothing unpickles arbitrary objects (see :mod:`dinolite.checkpoint.manager` for the formats).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from dinolite.checkpoint.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    DamagedCheckpointError,
)
from dinolite.checkpoint.integrity import (
    check_architecture,
    check_metadata_budget,
    check_saved_shapes,
    check_shard_files,
)
from dinolite.checkpoint.layout import (
    CHECKPOINT_DIRNAME,
    RNG_DIRNAME,
    STATE_FILE,
    is_complete_checkpoint,
    latest_checkpoint,
)
from dinolite.checkpoint.records import check_method_record, check_state_info
from dinolite.checkpoint.safe_metadata import (
    CheckpointMetadataError,
    SafeFileSystemReader,
    UnsafeMetadataError,
)
from dinolite.checkpoint.state import (
    APP_KEY,
    EXTRA_KEY,
    LEGACY_METHOD,
    METHOD_KEY,
    MODEL_KEY,
    OPTIMIZER_KEY,
    _collect,
    _flat_tensors,
    _merge_trees,
    _module_and_optimizer,
    _stateful_entries,
    restore_rng_state,
)
from dinolite.checkpoint.tensor_files import load_tensor_file
from dinolite.distributed import any_rank, is_distributed, rank_and_world


@contextlib.contextmanager
def no_single_process_warning() -> Iterator[None]:
    """DCP warns on every call without a process group; one process is a supported mode here, not a slip."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def read_checkpoint_info(path: str | Path) -> dict:
    """The ``state.json`` of a checkpoint directory (iteration, batches_consumed, world_size, app_state)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {path} does not exist")
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"{path} is not a complete checkpoint directory (needs .metadata and {STATE_FILE})")
    try:
        info = json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedCheckpointError(f"{path / STATE_FILE}: invalid JSON ({exc})") from exc
    return check_state_info(info, path / STATE_FILE)


def _drop_stateless_parameters(tree: dict[str, Any], saved_keys: set[str]) -> set[str]:
    """Remove from the load targets the optimizer state of parameters saved without any; return their names.

    AdamW creates a parameter's moments at its first gradient, so a parameter that never received one
    (frozen, or reached by no loss: ``ibot.separate_head=true ibot.loss_weight=0``) has no optimizer
    state in the checkpoint, while the targets of a fresh optimizer hold state for every parameter.
    Such a parameter must resume without state, as it was. A parameter with *some* of its state entries
    saved is a damaged checkpoint and stays an error.
    """
    states = tree.get(OPTIMIZER_KEY, {}).get("state", {})
    stateless: set[str] = set()
    for name, state in list(states.items()):
        keys = set(_flat_tensors(state, f"{OPTIMIZER_KEY}.state.{name}.")) if isinstance(state, Mapping) else set()
        if keys and not keys & saved_keys:
            stateless.add(name)
            del states[name]
    return stateless


def _forget_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: set[str]) -> None:
    """Delete the optimizer state of the parameters named ``names`` (fully qualified, as in the checkpoint)."""
    if not names:
        return
    for name, param in model.named_parameters():
        if name in names:
            optimizer.state.pop(param, None)


def method_record(path: str | Path) -> dict[str, Any]:
    """The method a checkpoint was trained with: ``name``, ``eval_network`` and ``heads`` (the student
    modules besides the backbone that ``--with-heads`` exports), from its ``state.json``.

    ``path`` may be a run directory, its ``checkpoints/`` folder or one checkpoint. Checkpoints written
    before the record existed are DINOv2's (``LEGACY_METHOD``); their heads are the student's modules.
    """
    checkpoint_dir = resolve_checkpoint_dir(path)
    saved = read_checkpoint_info(checkpoint_dir).get(METHOD_KEY)
    record = LEGACY_METHOD if saved is None else check_method_record(saved, checkpoint_dir / STATE_FILE)
    record = dict(record)
    if "heads" not in record:
        record["heads"] = [m for m in checkpoint_modules(checkpoint_dir, "student") if m != "backbone"]
    return record


def checkpoint_modules(path: str | Path, network: str) -> list[str]:
    """The modules of ``network`` (``student``/``teacher``) saved in a checkpoint, e.g. ``["backbone", "dino_head"]``."""
    checkpoint_dir = resolve_checkpoint_dir(path)
    prefix = f"{MODEL_KEY}.{network}."
    keys = SafeFileSystemReader(str(checkpoint_dir)).read_metadata().state_dict_metadata
    return sorted({k[len(prefix) :].split(".", 1)[0] for k in keys if k.startswith(prefix)})


def collective_device() -> torch.device:
    """Where a rank-agreement all-reduce runs: the current CUDA device under NCCL, else the CPU."""
    if is_distributed() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _read_metadata(path: Path) -> tuple[SafeFileSystemReader, Any]:
    """The restricted reader and metadata of ``path``; unreadable metadata or shards are damage."""
    reader = SafeFileSystemReader(str(path))
    try:
        metadata = reader.read_metadata()
    except UnsafeMetadataError:
        raise
    except CheckpointMetadataError as exc:
        raise DamagedCheckpointError(str(exc)) from exc
    check_shard_files(path, metadata)
    return reader, metadata


def load_checkpoint(path: str | Path, app_state: Mapping[str, Any]) -> dict:
    """Load model, optimizer moments, extra state, Stateful entries and this rank's RNG streams.

    Collective; when any rank finds the checkpoint damaged, every rank raises
    :class:`DamagedCheckpointError` (so a caller can fall back to an older one on all ranks together).
    """
    path = Path(path)
    failure: DamagedCheckpointError | None = None
    try:
        info = _load_checkpoint(path, app_state)
    except DamagedCheckpointError as exc:
        failure = exc
    if any_rank(failure is not None, collective_device()):
        raise failure or DamagedCheckpointError(f"{path}: damaged (found on another rank)")
    return info


def _load_checkpoint(path: Path, app_state: Mapping[str, Any]) -> dict:
    info = read_checkpoint_info(path)
    model, optimizer = _module_and_optimizer(app_state)
    tree, _ = _collect(app_state)  # targets; allocates AdamW moments on a fresh optimizer (zero-lr step)
    reader, metadata = _read_metadata(path)
    stateless = _drop_stateless_parameters(tree, set(metadata.state_dict_metadata))
    targets = _flat_tensors(tree, "")
    check_architecture(path, metadata, targets)
    check_metadata_budget(path, metadata, list(targets))  # chunk sizes backed by shard bytes, as consolidation
    rank, world = rank_and_world()
    rng_file = path / RNG_DIRNAME / f"rank_{rank:05d}.pt"
    rng_state = None
    if info["world_size"] == world and rng_file.is_file():
        try:
            rng_state = load_tensor_file(rng_file)
        except Exception as exc:  # truncated zip, foreign pickle, inflated tensors: name the file
            raise DamagedCheckpointError(f"{rng_file}: unreadable ({type(exc).__name__}: {exc})") from exc
    try:
        with no_single_process_warning():
            dcp.load(tree, storage_reader=reader)
    except (Exception, dcp.CheckpointException) as exc:  # CheckpointException is a BaseException
        raise DamagedCheckpointError(f"{path}: the shards do not read back ({type(exc).__name__}: {exc})") from exc
    if optimizer is not None:
        _, current = get_state_dict(model, [optimizer])
        optim_sd = {"state": tree[OPTIMIZER_KEY]["state"], "param_groups": current["param_groups"]}
        # Non-strict only for the parameters saved without optimizer state (every other entry was checked
        # above); torch then leaves them with the state of the fresh optimizer, which is dropped after.
        options = StateDictOptions(strict=not stateless)
        set_state_dict(model, [optimizer], model_state_dict=tree[MODEL_KEY], optim_state_dict=optim_sd, options=options)
        _forget_optimizer_state(model, optimizer, stateless)
    else:
        set_state_dict(model, [], model_state_dict=tree[MODEL_KEY], optim_state_dict={})
    loader = getattr(model, "load_extra_state", None)
    if tree[EXTRA_KEY] and callable(loader):
        loader(dict(tree[EXTRA_KEY]))
    saved_plain = info.get("app_state", {})
    for name, obj in _stateful_entries(app_state).items():
        obj.load_state_dict(_merge_trees(tree[APP_KEY].get(name, {}), saved_plain.get(name, {})))
    if rng_state is not None:
        try:
            restore_rng_state(rng_state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:  # a foreign or tampered dict
            raise DamagedCheckpointError(f"{rng_file}: not this run's RNG state ({type(exc).__name__}: {exc})") from exc
    return info


# --------------------------------------------------------------------------------------------------
# Consolidation (export / eval): one process, no process group
# --------------------------------------------------------------------------------------------------


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run's ``checkpoints/`` folder or a run's output directory."""
    path = Path(path)
    if is_complete_checkpoint(path):
        return path
    run_root = path.parent if path.name == CHECKPOINT_DIRNAME else path
    latest = latest_checkpoint(run_root / CHECKPOINT_DIRNAME)
    if latest is not None:
        return latest
    raise CheckpointNotFoundError(
        f"no complete checkpoint at {path} (expected iter_XXXXXXXX/ with .metadata and {STATE_FILE})"
    )


def load_consolidated_state_dict(
    checkpoint_dir: str | Path,
    model: str = "teacher",
    part: str | None = "backbone",
    missing_ok: bool = False,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model`` (``"teacher"``/``"student"``) ``part`` as CPU tensors.

    ``part="backbone"`` gives DINOv2's key layout (``cls_token``, ``blocks.0.attn.qkv.weight``, ...);
    ``part=None`` gives the whole model dict (``backbone.*``, ``dino_head.*``, ...). Reads DCP's metadata,
    allocates every tensor at its global shape and loads all shards into it in this process only, so it
    needs no process group and works for checkpoints saved on any number of ranks.

    Before anything is allocated, every entry's size is checked against the shard bytes the metadata
    records for it (:func:`~dinolite.checkpoint.integrity.check_metadata_budget`) and, with ``expected``
    (``{key: shape}`` without the prefix, e.g. a model built on the ``meta`` device), against the
    architecture: :class:`ArchitectureMismatchError` names every key that differs.
    """
    path = resolve_checkpoint_dir(checkpoint_dir)
    if model == "objective":  # objective-level entries: part="extra" is extra_state(), as it returned them
        prefix = f"{part}." if part else ""
    else:
        prefix = f"{MODEL_KEY}.{model}." + (f"{part}." if part else "")
    reader, metadata = _read_metadata(path)
    tree: dict[str, Any] = {}  # key -> dtype until every check has passed, then the allocated tensor
    for key, item in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata):
            tree[key] = item.properties.dtype
    keys = list(tree)
    if not tree and missing_ok:  # e.g. the extra state of a method that has none
        return {}
    if not tree:
        models = sorted({k.split(".")[1] for k in metadata.state_dict_metadata if k.startswith("model.")})
        raise CheckpointError(f"{path}: no tensors under {prefix!r}; models in this checkpoint: {', '.join(models)}")
    if expected is not None:
        check_saved_shapes(path, metadata, expected, prefix)
    check_metadata_budget(path, metadata, keys)
    tree = {key: torch.empty(metadata.state_dict_metadata[key].size, dtype=dtype) for key, dtype in tree.items()}
    kwargs: dict[str, Any] = {"storage_reader": reader}
    if "no_dist" in inspect.signature(dcp.load).parameters:
        kwargs["no_dist"] = True  # stay local even when called inside a distributed job
    with no_single_process_warning():
        dcp.load(tree, **kwargs)
    return {key[len(prefix) :]: value for key, value in tree.items()}
