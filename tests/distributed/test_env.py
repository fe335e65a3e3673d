"""Environment detection (torchrun, Slurm, single), Slurm host lists, process-group helpers."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinolite.distributed import (
    DistributedEnv,
    DistributedEnvError,
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    barrier,
    destroy_distributed,
    detect_environment,
    distributed_session,
    init_distributed,
    is_main_process,
    parse_slurm_nodelist,
    resolve_backend,
    resolve_device,
)
from dinolite.distributed.env import SLURM_PORT_BASE, SLURM_PORT_SPAN

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29400"}
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "16",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[003-005,010]",
    "SLURM_JOB_ID": "123456",
}


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[003-005,010]", ["gpu003", "gpu004", "gpu005", "gpu010"]),
        ("a[1-2],b3", ["a1", "a2", "b3"]),
        ("a[8-11]", ["a8", "a9", "a10", "a11"]),
        ("n[09-11]-ib", ["n09-ib", "n10-ib", "n11-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x1,y[2],z[3-4,7]", ["x1", "y2", "z3", "z4", "z7"]),
        ("host-a.cluster,host-b.cluster", ["host-a.cluster", "host-b.cluster"]),
    ],
)
def test_parse_slurm_nodelist(nodelist, hosts):
    assert parse_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["a[1-2", "a1-2]", "a[x-2]", "a[5-3]", "a[[1]]"])
def test_parse_slurm_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="invalid Slurm node list"):
        parse_slurm_nodelist(bad)


def test_torchrun_environment():
    env = detect_environment(TORCHRUN)
    assert env == DistributedEnv(3, 8, 1, "node7", 29400, "torchrun")
    assert not is_main_process(env) and env.is_distributed


def test_slurm_environment_first_host_and_port_from_job_id():
    env = detect_environment(SLURM)
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 16, 1, "slurm")
    assert env.master_addr == "gpu003"
    assert env.master_port == SLURM_PORT_BASE + 123456 % SLURM_PORT_SPAN
    # every task of the job derives the same port; another job id gives another one
    assert detect_environment({**SLURM, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}).master_port == env.master_port
    assert detect_environment({**SLURM, "SLURM_JOB_ID": "123457"}).master_port != env.master_port


def test_slurm_master_overrides():
    env = detect_environment({**SLURM, "MASTER_PORT": "4242", "MASTER_ADDR": "10.0.0.1"})
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 4242)
    # MASTER_PORT makes SLURM_JOB_ID unnecessary
    no_job = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_ID"}
    assert detect_environment({**no_job, "MASTER_PORT": "4242"}).master_port == 4242


def test_single_process_when_nothing_is_set():
    env = detect_environment({"PATH": "/usr/bin"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (0, 1, 0, "single")
    assert is_main_process(env) and not env.is_distributed


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, ["LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]),
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}, ["MASTER_PORT"]),
        ({"LOCAL_RANK": "0"}, ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]),
        ({"SLURM_PROCID": "0"}, ["SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"]),
        ({k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}, ["SLURM_JOB_NODELIST"]),
    ],
)
def test_partial_environment_names_missing_variables(environ, named):
    with pytest.raises(DistributedEnvError) as info:
        detect_environment(environ)
    for name in named:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({**TORCHRUN, "RANK": "8"}, "RANK=8 is outside"),
        ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
        ({**TORCHRUN, "LOCAL_RANK": "5"}, "LOCAL_RANK=5 is inconsistent"),
        ({**TORCHRUN, "RANK": "two"}, "RANK='two' is not an integer"),
        ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT='70000' is outside"),
        ({**TORCHRUN, "MASTER_ADDR": " "}, "MASTER_ADDR is empty"),
        ({**SLURM, "SLURM_PROCID": "16"}, "SLURM_PROCID=16 is outside"),
        ({**SLURM, "SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID='abc'"),
    ],
)
def test_inconsistent_environment(environ, fragment):
    with pytest.raises(DistributedEnvError, match=fragment):
        detect_environment(environ)


def test_backend_and_device_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "gloo"
    assert resolve_backend("gloo", cpu) == "gloo"
    with pytest.raises(ValueError, match="nccl"):
        resolve_backend("nccl", cpu)
    with pytest.raises(ValueError, match="expected auto, nccl or gloo"):
        resolve_backend("mpi", cpu)
    assert resolve_device("cpu", 0) == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto", 3) == cpu
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda", 0)


def test_single_process_init_creates_no_group_and_helpers_are_identity():
    env = init_distributed(backend="auto", device="cpu", environ={})
    assert env.backend == "gloo" and env.device == "cpu" and env.world_size == 1
    assert not dist.is_initialized()
    assert all_reduce_max(2.5) == 2.5
    assert all_reduce_sum(1.5) == 1.5
    assert any_rank(True) and not any_rank(False)
    barrier()
    destroy_distributed()  # idempotent without a group


def test_one_rank_torchrun_session_in_process():
    """A real gloo group through the tcp:// rendezvous (world of 1 still creates no group: nothing to do)."""
    environ = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with distributed_session(backend="gloo", device="cpu", environ=environ) as env:
        assert env.source == "torchrun" and env.world_size == 1
        assert not dist.is_initialized()


def _leave_worker(rank: int, init_file: str, out_dir: str, rank1_leaves: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 1 and not rank1_leaves:
        os._exit(0)  # a rank that dies without leaving (as after an error on that rank alone)
    start = time.monotonic()
    destroy_distributed(leave_together=True, timeout_s=3.0)
    elapsed = time.monotonic() - start
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{dist.is_initialized()} {elapsed:.3f}")


@pytest.mark.parametrize("rank1_leaves", [True, False])
def test_leaving_together_meets_at_a_barrier_and_never_hangs(tmp_path, rank1_leaves):
    """Normal exit: both ranks meet, then tear down. When a rank never arrives, the other gives up after
    the timeout and still tears its group down (no hang)."""
    mp.spawn(_leave_worker, args=(str(tmp_path / "init"), str(tmp_path), rank1_leaves), nprocs=2, join=True)
    initialized, elapsed = (tmp_path / "rank0.txt").read_text().split()
    assert initialized == "False"
    if rank1_leaves:
        assert (tmp_path / "rank1.txt").read_text().split()[0] == "False"
    else:
        assert float(elapsed) < 30.0 and not (tmp_path / "rank1.txt").exists()
