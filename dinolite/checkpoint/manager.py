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
(temp file + rename), then deletes all but the newest ``keep_last`` directories (each renamed to
``iter_XXXXXXXX.pruned`` first). A crash at any point leaves either the previous checkpoint or the new
one, never a half-written directory under a final name; the next save removes the temporary names a
crash left (:mod:`dinolite.checkpoint.leftovers`).

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

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed.checkpoint as dcp

from dinolite.checkpoint.errors import (
    CheckpointError,
    DamagedCheckpointError,
)
from dinolite.checkpoint.integrity import describe_save_failure
from dinolite.checkpoint.layout import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILE,
    FORMAT_VERSION,
    LATEST_POINTER,
    RNG_DIRNAME,
    STATE_FILE,
    complete_checkpoints,
    iteration_dirname,
    latest_checkpoint,
)
from dinolite.checkpoint.leftovers import PRUNED_SUFFIX, remove_leftovers
from dinolite.checkpoint.reader import collective_device, load_checkpoint, no_single_process_warning
from dinolite.checkpoint.state import (
    METHOD_KEY,
    _collect,
    capture_rng_state,
)
from dinolite.checkpoint.tensor_files import save_tensor_file
from dinolite.config import save_config
from dinolite.distributed import any_rank, rank_and_world
from dinolite.io import write_text_atomic

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
        return complete_checkpoints(self.directory)

    def latest(self, warn: Any = None) -> Path | None:
        """The newest complete checkpoint: the ``latest`` pointer, or a scan when the pointer is missing,
        stale or invalid (``warn`` gets the message naming an invalid one, once per process; default: a
        ``warning:`` line on stderr)."""
        return latest_checkpoint(self.directory, warn)

    def load_latest_intact(self, app_state: Mapping[str, Any], warn: Any = print) -> tuple[Path, dict] | None:
        """Load the newest checkpoint that reads back intact (collective); None when there is none at all.

        A damaged one (:class:`DamagedCheckpointError`: empty/truncated metadata or shards, broken
        state.json or RNG file) is reported through ``warn`` and the previous one is tried. Architecture
        mismatches and refused (unsafe) metadata are raised at once: an older checkpoint cannot fix them.
        Raises :class:`DamagedCheckpointError` when every checkpoint is damaged.
        """
        candidates = self.checkpoints()[::-1]
        latest = self.latest(lambda message: warn(f"warning: {message}"))
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
        rank, world = rank_and_world()
        final = self.directory / iteration_dirname(iteration)
        tmp = final.with_name(final.name + ".tmp")
        # Each phase ends with an all-reduce on "did it fail here?": every rank gives up together (no rank
        # left waiting in a barrier), the temp folder is removed, and the message names the cause.
        failure: BaseException | None = None
        if rank == 0:
            try:
                remove_leftovers(self.directory, self.keep_last)  # e.g. this tmp, left by a run killed while saving
                (tmp / RNG_DIRNAME).mkdir(parents=True)
            except OSError as exc:
                failure = exc
        self._give_up_together(failure, tmp, iteration)
        try:
            tree, plain = _collect(app_state)
            with no_single_process_warning():
                dcp.save(tree, checkpoint_id=str(tmp))
            save_tensor_file(capture_rng_state(), tmp / RNG_DIRNAME / f"rank_{rank:05d}.pt")
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
        if any_rank(failure is not None, collective_device()):
            # Judged before the temp folder goes: the free space then is what the failed writer saw.
            message = describe_save_failure(failure, self.directory)
            if rank_and_world()[0] == 0:
                shutil.rmtree(tmp, ignore_errors=True)
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
                # Renamed first (one atomic step), so a kill inside rmtree leaves a name that is never
                # taken for a checkpoint and that the next save removes.
                doomed = path.with_name(path.name + PRUNED_SUFFIX)
                shutil.rmtree(doomed, ignore_errors=True)
                try:
                    os.replace(path, doomed)
                except OSError:
                    continue
                shutil.rmtree(doomed, ignore_errors=True)

    # ---- load ------------------------------------------------------------------------------------

    def load(self, path: str | Path, app_state: Mapping[str, Any]) -> dict:
        """Restore ``app_state`` in place from checkpoint directory ``path`` (collective).

        Returns the checkpoint's ``state.json`` (``iteration``, ``batches_consumed``, ``world_size``).
        """
        return load_checkpoint(path, app_state)
