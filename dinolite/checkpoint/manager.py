"""Sharded, atomic, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under a run's output directory::

    checkpoints/
      iter_00000100/            one directory per saved iteration (complete when it has this name)
        .metadata, *.distcp     DCP: student + teacher (``model.*``), AdamW moments (``optimizer.state.*``),
                                centering buffers (``extra.*``) - every rank writes its own shards
        rng/rank_00000.pt       per-rank RNG states (python, numpy, torch CPU, CUDA), tensors only
        state.json              iteration, batches consumed (data-stream position), world size
        config.yaml             the resolved config the run used (the checkpoint is self-describing)
      latest                    text file naming the newest complete directory, replaced last

A save writes ``iter_XXXXXXXX.tmp`` and renames it once every rank has finished, then replaces ``latest``
(temp file + rename), then deletes all but the newest ``keep_last`` directories. A crash at any point
leaves either the previous checkpoint or the new one, never a half-written directory under a final name.

Exact resume: schedules are pure functions of the iteration (only the iteration is stored), the optimizer
moments and step counters are restored, every rank restores its own RNG streams, and the trainer restarts
its data stream at ``batches_consumed`` (``build_train_loader(start_batch=...)``). With the same world size
a resumed run is bitwise identical to an uninterrupted one on CPU. DCP reshards on load, so a checkpoint
saved on N ranks loads on M (RNG streams are then left as seeded: they are per-rank).

Nothing unpickles arbitrary objects: DCP gets tensors only (its byte-object path uses full pickle), its
``.metadata`` pickle is read by :class:`~dinolite.checkpoint.safe_metadata.SafeFileSystemReader` (a
restricted unpickler: DCP's own reader uses plain ``pickle.load``), shards by DCP with
``torch.load(weights_only=True)``, side files are JSON or tensor dicts read with
``torch.load(weights_only=True)``. Optimizer hyper-parameters
(param groups) are not stored: the trainer rebuilds the groups and sets lr / weight decay from the
schedules every iteration.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
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
from dinolite.checkpoint.integrity import check_architecture, check_shard_files, describe_save_failure
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
    capture_rng_state,
    restore_rng_state,
)
from dinolite.config import save_config
from dinolite.dist import any_rank, barrier, is_distributed, rank_and_world
from dinolite.io import write_text_atomic

CHECKPOINT_DIRNAME = "checkpoints"
LATEST_POINTER = "latest"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
RNG_DIRNAME = "rng"
FORMAT_VERSION = 1
ITER_PREFIX = "iter_"


def iteration_dirname(iteration: int) -> str:
    return f"{ITER_PREFIX}{iteration:08d}"


def _rank_world() -> tuple[int, int]:
    return rank_and_world()


def _barrier() -> None:
    barrier()


@contextlib.contextmanager
def _no_single_process_warning() -> Iterator[None]:
    """DCP warns on every call without a process group; one process is a supported mode here, not a slip."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def is_complete_checkpoint(path: Path) -> bool:
    """A finished checkpoint directory: DCP metadata and the state file are both there."""
    return (path / ".metadata").is_file() and (path / STATE_FILE).is_file()


# --------------------------------------------------------------------------------------------------
# Manager
# --------------------------------------------------------------------------------------------------


class CheckpointManager:
    """Saves and restores an ``app_state`` under ``<root>/checkpoints``; every rank calls every method.

    ``root``: the run's output directory, or its ``checkpoints`` folder itself.
    ``app_state``: ``{"model": objective, "optimizer": optimizer, <name>: Stateful, ...}`` - the objective
    (student + teacher, possibly FSDP2-sharded, optionally ``extra_state()/load_extra_state()``), its
    optimizer, and any object with ``state_dict()/load_state_dict()`` whose state is a nested dict of
    tensors and JSON values (the loop's progress counters, the watchdog's patience counters, ...).
    ``keep_last``: number of newest checkpoints kept (0 keeps all). ``config``: a ``dinolite.config.Config``
    written as ``config.yaml`` into every checkpoint before it is renamed into place. ``method``: the
    method record (``MethodSpec.record(cfg)``: name, evaluated network, head names) written into
    ``state.json`` so that eval and export read it without importing the trainer (:func:`method_record`).
    """

    def __init__(
        self,
        root: str | Path,
        keep_last: int = 3,
        config: Any | None = None,
        method: Mapping[str, Any] | None = None,
    ) -> None:
        if keep_last < 0:
            raise ValueError(f"keep_last={keep_last} (train.keep_last_checkpoints) must be >= 0")
        root = Path(root)
        self.directory = root if root.name == CHECKPOINT_DIRNAME else root / CHECKPOINT_DIRNAME
        self.keep_last = keep_last
        self.config = config
        self.method = dict(method) if method is not None else None

    # ---- discovery -------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            p
            for p in self.directory.iterdir()
            if p.is_dir() and p.name.startswith(ITER_PREFIX) and p.name[len(ITER_PREFIX) :].isdigit()
        ]
        return sorted((p for p in found if is_complete_checkpoint(p)), key=lambda p: int(p.name[len(ITER_PREFIX) :]))

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the ``latest`` pointer, or a scan when the pointer is missing/stale."""
        pointer = self.directory / LATEST_POINTER
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if is_complete_checkpoint(candidate):
                return candidate
        found = self.checkpoints()
        return found[-1] if found else None

    def load_latest_intact(self, app_state: Mapping[str, Any], warn: Any = print) -> tuple[Path, dict] | None:
        """Load the newest checkpoint that reads back intact (collective); None when there is none at all.

        A damaged one (:class:`DamagedCheckpointError`: empty/truncated metadata or shards, broken
        state.json or RNG file) is reported through ``warn`` and the previous one is tried. Architecture
        mismatches and refused (unsafe) metadata are raised at once: an older checkpoint cannot fix them.
        Raises :class:`DamagedCheckpointError` when every checkpoint is damaged.
        """
        candidates = self.checkpoints()[::-1]
        latest = self.latest()
        if latest is not None and latest in candidates:  # the pointer first (it names the newest save)
            candidates.remove(latest)
            candidates.insert(0, latest)
        damaged = []
        for path in candidates:
            try:
                return path, load_checkpoint(path, app_state)
            except DamagedCheckpointError as exc:
                damaged.append(str(exc))
                warn(f"warning: checkpoint {path} is damaged and skipped: {exc}")
        if damaged:
            raise DamagedCheckpointError(
                f"no intact checkpoint in {self.directory}: {' | '.join(damaged)}. Move the damaged directories "
                "away to start from scratch, or use a new output directory"
            )
        return None

    # ---- save ------------------------------------------------------------------------------------

    def save(self, iteration: int, app_state: Mapping[str, Any], batches_consumed: int | None = None) -> Path:
        """Checkpoint ``app_state`` as ``iter_<iteration>``; collective. Returns the final directory.

        ``batches_consumed``: this run's data-stream position (default ``iteration``: one batch per step).
        """
        rank, world = _rank_world()
        final = self.directory / iteration_dirname(iteration)
        tmp = final.with_name(final.name + ".tmp")
        # Each phase ends with an all-reduce on "did it fail here?": every rank gives up together (no rank
        # left waiting in a barrier), the temp folder is removed, and the message names the cause.
        failure: BaseException | None = None
        if rank == 0:
            try:
                if tmp.exists():
                    shutil.rmtree(tmp)  # left by a run killed while saving
                (tmp / RNG_DIRNAME).mkdir(parents=True)
            except OSError as exc:
                failure = exc
        self._give_up_together(failure, tmp, iteration)
        try:
            tree, plain = _collect(app_state)
            with _no_single_process_warning():
                dcp.save(tree, checkpoint_id=str(tmp))
            torch.save(capture_rng_state(), tmp / RNG_DIRNAME / f"rank_{rank:05d}.pt")
        except (Exception, dcp.CheckpointException) as exc:  # CheckpointException is a BaseException
            failure = exc
        self._give_up_together(failure, tmp, iteration)
        if rank == 0:
            info = {
                "format": FORMAT_VERSION,
                "iteration": int(iteration),
                "batches_consumed": int(iteration if batches_consumed is None else batches_consumed),
                "world_size": world,
                "torch_version": torch.__version__,
                "app_state": plain,
            }
            if self.method is not None:
                info[METHOD_KEY] = self.method
            try:
                self._finalize(tmp, final, info)
            except OSError as exc:
                failure = exc
        self._give_up_together(failure, tmp, iteration)
        return final

    def _give_up_together(self, failure: BaseException | None, tmp: Path, iteration: int) -> None:
        if any_rank(failure is not None, _collective_device()):
            if _rank_world()[0] == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            message = describe_save_failure(failure, self.directory) if failure else "failed on another rank"
            raise CheckpointError(f"iteration {iteration}: {message}") from failure

    def _finalize(self, tmp: Path, final: Path, info: dict) -> None:
        """Rank 0, once every rank has written: state.json and config.yaml, rename, ``latest``, prune."""
        write_text_atomic(tmp / STATE_FILE, json.dumps(info, indent=2) + "\n")
        if self.config is not None:
            save_config(self.config, tmp / CONFIG_FILE)
        if final.exists():  # the same iteration saved again (e.g. a preempted run resumed at once)
            stale = final.with_name(final.name + ".old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale)
        else:
            os.replace(tmp, final)
        write_text_atomic(self.directory / LATEST_POINTER, final.name + "\n", fsync=True)
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        if self.keep_last == 0:
            return
        existing = self.checkpoints()
        for path in existing[: max(0, len(existing) - self.keep_last)]:
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    # ---- load ------------------------------------------------------------------------------------

    def load(self, path: str | Path, app_state: Mapping[str, Any]) -> dict:
        """Restore ``app_state`` in place from checkpoint directory ``path`` (collective).

        Returns the checkpoint's ``state.json`` (``iteration``, ``batches_consumed``, ``world_size``).
        """
        return load_checkpoint(path, app_state)


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
    for key in ("iteration", "batches_consumed", "world_size"):
        if not isinstance(info.get(key), int):
            raise DamagedCheckpointError(f"{path / STATE_FILE}: missing or non-integer {key!r}")
    return info


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
    record = dict(read_checkpoint_info(checkpoint_dir).get(METHOD_KEY) or LEGACY_METHOD)
    if "heads" not in record:
        record["heads"] = [m for m in checkpoint_modules(checkpoint_dir, "student") if m != "backbone"]
    return record


def checkpoint_modules(path: str | Path, network: str) -> list[str]:
    """The modules of ``network`` (``student``/``teacher``) saved in a checkpoint, e.g. ``["backbone", "dino_head"]``."""
    checkpoint_dir = resolve_checkpoint_dir(path)
    prefix = f"{MODEL_KEY}.{network}."
    keys = SafeFileSystemReader(str(checkpoint_dir)).read_metadata().state_dict_metadata
    return sorted({k[len(prefix) :].split(".", 1)[0] for k in keys if k.startswith(prefix)})


def _collective_device() -> torch.device:
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
    if any_rank(failure is not None, _collective_device()):
        raise failure or DamagedCheckpointError(f"{path}: damaged (found on another rank)")
    return info


def _load_checkpoint(path: Path, app_state: Mapping[str, Any]) -> dict:
    info = read_checkpoint_info(path)
    model, optimizer = _module_and_optimizer(app_state)
    tree, _ = _collect(app_state)  # targets; allocates AdamW moments on a fresh optimizer (zero-lr step)
    reader, metadata = _read_metadata(path)
    stateless = _drop_stateless_parameters(tree, set(metadata.state_dict_metadata))
    check_architecture(path, metadata, _flat_tensors(tree, ""))
    rank, world = _rank_world()
    rng_file = path / RNG_DIRNAME / f"rank_{rank:05d}.pt"
    rng_state = None
    if info["world_size"] == world and rng_file.is_file():
        try:
            rng_state = torch.load(rng_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, foreign pickle: name the file
            raise DamagedCheckpointError(f"{rng_file}: unreadable ({type(exc).__name__}: {exc})") from exc
    try:
        with _no_single_process_warning():
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
        restore_rng_state(rng_state)
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
    latest = CheckpointManager(run_root).latest()
    if latest is not None:
        return latest
    raise CheckpointNotFoundError(
        f"no complete checkpoint at {path} (expected iter_XXXXXXXX/ with .metadata and {STATE_FILE})"
    )


def load_consolidated_state_dict(
    checkpoint_dir: str | Path, model: str = "teacher", part: str | None = "backbone", missing_ok: bool = False
) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model`` (``"teacher"``/``"student"``) ``part`` as CPU tensors.

    ``part="backbone"`` gives DINOv2's key layout (``cls_token``, ``blocks.0.attn.qkv.weight``, ...);
    ``part=None`` gives the whole model dict (``backbone.*``, ``dino_head.*``, ...). Reads DCP's metadata,
    allocates every tensor at its global shape and loads all shards into it in this process only, so it
    needs no process group and works for checkpoints saved on any number of ranks.
    """
    path = resolve_checkpoint_dir(checkpoint_dir)
    if model == "objective":  # objective-level entries: part="extra" is extra_state(), as it returned them
        prefix = f"{part}." if part else ""
    else:
        prefix = f"{MODEL_KEY}.{model}." + (f"{part}." if part else "")
    reader, metadata = _read_metadata(path)
    tree: dict[str, torch.Tensor] = {}
    for key, item in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata):
            tree[key] = torch.empty(item.size, dtype=item.properties.dtype)
    if not tree and missing_ok:  # e.g. the extra state of a method that has none
        return {}
    if not tree:
        models = sorted({k.split(".")[1] for k in metadata.state_dict_metadata if k.startswith("model.")})
        raise CheckpointError(f"{path}: no tensors under {prefix!r}; models in this checkpoint: {', '.join(models)}")
    kwargs: dict[str, Any] = {"storage_reader": reader}
    if "no_dist" in inspect.signature(dcp.load).parameters:
        kwargs["no_dist"] = True  # stay local even when called inside a distributed job
    with _no_single_process_warning():
        dcp.load(tree, **kwargs)
    return {key[len(prefix) :]: value for key, value in tree.items()}
