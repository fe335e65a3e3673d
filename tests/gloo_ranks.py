"""Run one function on N processes joined in one gloo process group and collect what each rank returns
(the harness of every "N processes = 1 process" test).

``compute(rank, world, *args)`` must be a module-level function (spawned processes import it by name);
its return value (tensors, numbers, lists, dicts of them) comes back through ``torch.save``, one file per
rank, in rank order. A rank that raises fails the call with that rank's traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(compute: Callable[..., Any], world: int, folder: Path, *args: Any) -> list[Any]:
    """``[compute(rank, world, *args) for rank in range(world)]``, each rank in its own process of one
    gloo group (rendezvous through a file in ``folder``, which also receives the results)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(compute, world, str(folder), args), nprocs=world, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _rank_main(rank: int, compute: Callable[..., Any], world: int, folder: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/gloo_store", rank=rank, world_size=world)
    try:
        result = compute(rank, world, *args)
        torch.save(result, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
