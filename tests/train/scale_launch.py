"""Start ``scale_worker.py`` as N processes with torchrun's variables (helper for the scale tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "scale_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",  # 2 ranks on a shared 2-core machine
    )
    if world == 1:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key)
    return env


def start(world: int, args: list[str]) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            env=rank_env(rank, world, port),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]


def wait(procs: list[subprocess.Popen], timeout: float = 240.0) -> None:
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        outputs.append(out)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise AssertionError(f"worker(s) failed {failed}:\n" + "\n----\n".join(o[-4000:] for o in outputs))


def run(world: int, args: list[str], timeout: float = 240.0) -> dict:
    """Run the worker on ``world`` processes; returns rank 0's ``result.pt``."""
    wait(start(world, args), timeout)
    return _result(args)


def _result(args: list[str]) -> dict:
    out = Path(args[args.index("--out") + 1])
    return torch.load(out / "result.pt", weights_only=True)


def start_nodes(nodes: int, per_node: int, args: list[str]) -> list[subprocess.Popen]:
    """One ``torchrun`` per "node", all on localhost: each is its own agent in one static rendezvous
    (``--nnodes``, ``--node-rank``, a shared master address) and starts ``per_node`` workers, which see
    torchrun's own variables (``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ...) as on a real cluster."""
    port = free_port()
    env = {k: v for k, v in rank_env(0, 1, port).items()}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}"]
    common = ["--master-addr=127.0.0.1", f"--master-port={port}", str(WORKER), *args]
    return [
        subprocess.Popen(
            [*command, f"--node-rank={node}", *common],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in range(nodes)
    ]


def run_nodes(nodes: int, per_node: int, args: list[str], timeout: float = 300.0) -> dict:
    """Run the worker as ``nodes`` torchrun launches of ``per_node`` processes; returns rank 0's result."""
    wait(start_nodes(nodes, per_node, args), timeout)
    return _result(args)
