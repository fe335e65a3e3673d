"""Process-group set-up for torchrun, Slurm (srun / submitit) and single-process runs.

``detect_environment(environ)`` is a pure function of the environment mapping: it decides who this
process is (rank, world size, local rank) and where the rendezvous is (master address and port).
``init_distributed`` turns that into a ``torch.distributed`` process group. Nothing here keeps state of
its own: the only global state is what ``torch.distributed`` itself keeps, and every helper takes what it
needs as arguments.

Sources, in order of precedence:

* torchrun (or any launcher following its convention): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``. Seeing any of the first three means torchrun; then all five must be
  present.
* Slurm: ``SLURM_PROCID`` (rank), ``SLURM_NTASKS`` (world size), ``SLURM_LOCALID`` (local rank), the
  master is the first host of ``SLURM_JOB_NODELIST`` and the port is derived from ``SLURM_JOB_ID`` so that
  every task of a job agrees on it without talking. ``MASTER_ADDR`` / ``MASTER_PORT`` override both.
* Otherwise a single process (rank 0 of 1); no process group is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

from dinolite.distributed.collectives import is_distributed

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")
# Ports derived from a Slurm job id land in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN): above the
# registered-service range and below the usual Linux ephemeral range (32768+), so two jobs sharing a node
# collide only when their ids agree modulo the span.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 12000
DEFAULT_SINGLE_PORT = 29500


class DistributedEnvError(RuntimeError):
    """The launcher's environment is partial or inconsistent; the message names the variables at fault."""


@dataclass(frozen=True)
class DistributedEnv:
    """Who this process is in the job. ``source`` is ``"torchrun"``, ``"slurm"`` or ``"single"``.

    ``backend`` and ``device`` are filled in by :func:`init_distributed` (empty / ``"cpu"`` before).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_SINGLE_PORT
    source: str = "single"
    backend: str = ""
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_main_process(env: DistributedEnv) -> bool:
    """True on global rank 0 (the process that writes logs, pointers and exports)."""
    return env.rank == 0


# --------------------------------------------------------------------------------------------------
# Environment detection
# --------------------------------------------------------------------------------------------------


def _int_var(environ: Mapping[str, str], name: str) -> int:
    raw = environ[name]
    try:
        return int(raw)
    except ValueError:
        raise DistributedEnvError(f"environment variable {name}={raw!r} is not an integer") from None


def _port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise DistributedEnvError(f"environment variable {name}={value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise DistributedEnvError(f"environment variable {name}={value!r} is outside 1..65535")
    return port


def _check_ranks(rank: int, world_size: int, local_rank: int, names: tuple[str, str, str]) -> None:
    rank_name, world_name, local_name = names
    if world_size < 1:
        raise DistributedEnvError(f"{world_name}={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise DistributedEnvError(f"{rank_name}={rank} is outside 0..{world_name}-1 (={world_size - 1})")
    if not 0 <= local_rank <= rank:
        raise DistributedEnvError(
            f"{local_name}={local_rank} is inconsistent with {rank_name}={rank} (expected 0 <= local rank <= rank)"
        )


def slurm_port_from_job_id(job_id: str) -> int:
    """A port every task of Slurm job ``job_id`` derives identically, without communicating."""
    try:
        number = int(job_id)
    except ValueError:
        raise DistributedEnvError(f"environment variable SLURM_JOB_ID={job_id!r} is not an integer") from None
    return SLURM_PORT_BASE + number % SLURM_PORT_SPAN


def detect_environment(environ: Mapping[str, str]) -> DistributedEnv:
    """Read torchrun's or Slurm's variables from ``environ`` (pass ``os.environ``); see the module doc.

    Raises :class:`DistributedEnvError` naming the missing or inconsistent variables.
    """
    if any(name in environ for name in TORCHRUN_VARS[:3]):
        missing = [name for name in TORCHRUN_VARS if name not in environ]
        if missing:
            raise DistributedEnvError(
                f"incomplete torchrun environment: {', '.join(missing)} not set "
                f"(a torchrun-style launch needs all of {', '.join(TORCHRUN_VARS)})"
            )
        rank, world, local = (_int_var(environ, n) for n in TORCHRUN_VARS[:3])
        _check_ranks(rank, world, local, ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        addr = environ["MASTER_ADDR"].strip()
        if not addr:
            raise DistributedEnvError("environment variable MASTER_ADDR is empty")
        return DistributedEnv(rank, world, local, addr, _port(environ["MASTER_PORT"], "MASTER_PORT"), "torchrun")

    if "SLURM_PROCID" in environ:
        missing = [name for name in SLURM_VARS if name not in environ]
        if "MASTER_PORT" not in environ and "SLURM_JOB_ID" not in environ:
            missing.append("SLURM_JOB_ID (or MASTER_PORT)")
        if missing:
            raise DistributedEnvError(
                f"incomplete Slurm environment: {', '.join(missing)} not set "
                "(run the training under srun, or through launch/slurm.py)"
            )
        rank, world, local = (_int_var(environ, n) for n in SLURM_VARS[:3])
        _check_ranks(rank, world, local, ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
        if "MASTER_ADDR" in environ:
            addr = environ["MASTER_ADDR"].strip()
        else:
            hosts = parse_slurm_nodelist(environ["SLURM_JOB_NODELIST"])
            if not hosts:
                raise DistributedEnvError("environment variable SLURM_JOB_NODELIST is empty")
            addr = hosts[0]
        if "MASTER_PORT" in environ:
            port = _port(environ["MASTER_PORT"], "MASTER_PORT")
        else:
            port = slurm_port_from_job_id(environ["SLURM_JOB_ID"])
        return DistributedEnv(rank, world, local, addr, port, "slurm")

    return DistributedEnv()


# --------------------------------------------------------------------------------------------------
# Slurm host lists
# --------------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``a[1-2,4],b3`` -> ``["a[1-2,4]", "b3"]``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"invalid Slurm node list {text!r}: nested '['")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"invalid Slurm node list {text!r}: unmatched ']'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"invalid Slurm node list {text!r}: unmatched '['")
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _expand_ranges(body: str, whole: str) -> list[str]:
    """``003-005,010`` -> ``["003", "004", "005", "010"]`` (zero padding follows the lower bound)."""
    values = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise ValueError(f"invalid Slurm node list {whole!r}: bad range {item!r}")
        low, high = match.group(1), match.group(2)
        if high is None:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"invalid Slurm node list {whole!r}: range {item!r} goes backwards")
        values.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return values


def _expand_host(pattern: str, whole: str) -> list[str]:
    """Expand every bracket group of one host pattern (``r[1-2]n[1-2]`` gives the cartesian product)."""
    hosts = [""]
    for literal, body in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", pattern):
        if not literal and not body:
            continue
        choices = _expand_ranges(body, whole) if body else [""]
        hosts = [h + literal + c for h in hosts for c in choices]
    return hosts


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed host list, in order.

    ``"gpu[003-005,010]"`` -> ``["gpu003", "gpu004", "gpu005", "gpu010"]``;
    ``"a[1-2],b3"`` -> ``["a1", "a2", "b3"]``. Raises ``ValueError`` naming the list when malformed.
    """
    hosts: list[str] = []
    for pattern in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_host(pattern, nodelist))
    return hosts


# --------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------


def resolve_device(device: str, local_rank: int) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available else ``cpu``; ``"cuda"`` requires CUDA."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r}; expected auto, cpu or cuda")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested (train.device) but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedEnvError(f"local rank {local_rank} has no GPU: this node has {count} visible")
    return torch.device("cuda", local_rank)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` -> NCCL for CUDA devices, gloo for CPU. NCCL on a CPU device is an error."""
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend={backend!r}; expected auto, nccl or gloo (distributed.backend)")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("distributed.backend='nccl' needs CUDA devices; use gloo (or auto) on CPU")
    return backend


def init_distributed(
    backend: str = "auto",
    device: str = "auto",
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 1800.0,
) -> DistributedEnv:
    """Detect the environment, pick the device and create the default process group when world > 1.

    On CUDA the current device is set to the local rank before the group is created (NCCL binds to it).
    A single process gets no process group: every helper here works without one.
    Returns the environment with ``backend`` and ``device`` filled in.
    """
    env = detect_environment(os.environ if environ is None else environ)
    torch_device = resolve_device(device, env.local_rank)
    chosen = resolve_backend(backend, torch_device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    env = dataclasses.replace(env, backend=chosen, device=str(torch_device))
    if env.world_size == 1:
        return env
    if is_distributed():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise DistributedEnvError(
                f"a process group already exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the environment says rank {env.rank} of {env.world_size}"
            )
        return env
    kwargs = {}
    if torch_device.type == "cuda":
        kwargs["device_id"] = torch_device  # binds NCCL to this GPU eagerly
    dist.init_process_group(
        backend=chosen,
        init_method=f"tcp://{_url_host(env.master_addr)}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return env


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def destroy_distributed(leave_together: bool = False, timeout_s: float = 60.0) -> None:
    """Tear down the default process group if one exists (idempotent).

    ``leave_together`` is for a normal exit, where every rank gets here: the ranks meet at a barrier
    first. A gloo rank still tearing its group down while another has already exited can abort with
    "terminate called without an active exception" (seen in CI under torchrun). On gloo the barrier is
    monitored: a rank that never arrives (it failed) makes it give up after ``timeout_s`` instead of
    hanging, and the group is torn down anyway.
    """
    if not is_distributed():
        return
    if leave_together:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
            else:
                dist.barrier()
        except RuntimeError:  # a rank did not arrive: its own error is the one to report, not this one
            pass
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(
    backend: str = "auto", device: str = "auto", environ: Mapping[str, str] | None = None
) -> Iterator[DistributedEnv]:
    """``with distributed_session(...) as env:`` - init on entry, destroy on exit (even on error)."""
    env = init_distributed(backend=backend, device=device, environ=environ)
    try:
        yield env
    finally:
        destroy_distributed()
