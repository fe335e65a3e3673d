"""One training step of the real code at any world size, on fake tensors and a fake process group.

:func:`measure_step` builds the run exactly as ``dinolite-train`` does (:func:`dinolite.train.build.build_run`:
the method's objective, FSDP2 / HSDP with the configured strategy, activation checkpointing, the mixed
precision policy, AdamW and its parameter groups, the schedules) inside ``FakeTensorMode`` with
``torch.testing._internal.distributed.fake_pg`` as the process group, as rank 0 of ``world_size``.
Nothing is allocated: a ViT-g step at 96 ranks runs on a laptop. It then primes AdamW's state (one
optimizer step on zero gradients, so the measured step is a steady-state one, with its moments in memory)
and runs one :meth:`~dinolite.train.run.Run.step` under :class:`~dinolite.plan.measure.StepAccount`.

The same :func:`account_step` runs on real tensors too (``fake=False``): that is how ``tests/plan`` checks
the fake run's collectives against a real gloo run, and its memory against real storages.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import signal
import time
import warnings
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dinolite.config import Config
from dinolite.distributed import DistributedEnv
from dinolite.fsdp.sharding import ShardingPlan
from dinolite.models.backbone_factory import backbone_kwargs
from dinolite.plan.fake_values import FiniteValues, HostValues, fake_mode
from dinolite.plan.measure import Collective, StepAccount
from dinolite.train.build import build_run
from dinolite.train.run import Run

try:
    from torch.testing._internal.distributed.fake_pg import FakeStore
except ImportError as exc:  # pragma: no cover - every torch >= 2.2 ships it
    raise ImportError(
        f"dinolite-plan needs torch.testing._internal.distributed.fake_pg (the 'fake' process group), missing "
        f"from torch {torch.__version__}: {exc}"
    ) from exc


@dataclasses.dataclass
class StepCost:
    """What one step costs one rank (rank 0; every rank of a data-parallel run does the same work)."""

    world_size: int
    processes_per_node: int
    batch_size_per_gpu: int
    peak_bytes: int
    by_category: dict[str, int]
    flops: int  # this rank's step (forward, backward, optimizer), counted by torch's flop counter
    flops_by_op: dict[str, int]
    collectives: list[Collective]
    sharding: ShardingPlan | None
    precision: torch.dtype | None
    host_defaults: dict[str, int]  # host reads of fake data answered with 0 / False, by call site
    seconds: float
    extrapolated_from: tuple[int, int] | None = None  # the backbone depths measured (None: the full model)


@contextlib.contextmanager
def fake_world(world_size: int, processes_per_node: int) -> Iterator[None]:
    """A fake default process group of ``world_size`` (this process is rank 0) with nodes of
    ``processes_per_node`` (what HSDP reads from ``LOCAL_WORLD_SIZE``)."""
    if dist.is_initialized():
        raise RuntimeError("dinolite-plan needs a process without a process group (one is already initialised)")
    saved = os.environ.get("LOCAL_WORLD_SIZE")
    os.environ["LOCAL_WORLD_SIZE"] = str(processes_per_node)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
        if saved is None:
            os.environ.pop("LOCAL_WORLD_SIZE", None)
        else:
            os.environ["LOCAL_WORLD_SIZE"] = saved


def prime_optimizer(run: Run) -> None:
    """Create AdamW's moments with one step on zero gradients (lr 0 at iteration 0 of the build), so the
    measured step holds them as every step after the first does."""
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    for param in params:
        param.grad = torch.zeros_like(param)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def account_step(run: Run, batch: Mapping[str, Any]) -> StepAccount:
    """One :meth:`Run.step` on ``batch`` under a :class:`StepAccount` that already knows the parameters,
    buffers, optimizer state and batch (they exist before the step)."""
    account = StepAccount()
    objective = run.objective
    trained = [p for module in objective.trainable_modules().values() for p in module.parameters()]
    account.memory.adopt(objective.parameters(), "parameters")
    account.memory.adopt(objective.buffers(), "parameters")
    account.memory.adopt(
        (v for state in run.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)),
        "optimizer state",
    )
    account.memory.adopt((v for v in batch.values() if isinstance(v, torch.Tensor)), "inputs")
    with account.tracking():
        _step_labelling_gradients(run, batch, account, trained)
    return account


def _step_labelling_gradients(run: Run, batch: Mapping[str, Any], account: StepAccount, trained: list) -> None:
    # The parameter gradients are born in backward (as temporaries); once the optimizer step starts they
    # are known, and relabelled for their whole life.
    hook = register_optimizer_step_pre_hook(lambda *_: account.memory.label_gradients(trained))
    try:
        run.step(batch)
    finally:
        hook.remove()


def measure_step(
    cfg: Config, world_size: int, processes_per_node: int, batch: Mapping[str, Any], *, full_depth: bool = False
) -> StepCost:
    """:func:`measure_full_step`, or, when the backbone's blocks are identical (``student.drop_path_uniform``,
    the default) and deeper than :data:`SAMPLE_DEPTHS`, the exact extrapolation of two shallower copies
    (:func:`extrapolate`): every quantity the planner reports (bytes by category at the peak, FLOPs,
    collective calls and bytes) is ``a + b * depth`` in the number of identical blocks, and fake-tensor
    execution costs about 1 ms per op, which at ViT-g's 40 blocks would take minutes on a CPU.
    ``full_depth=True`` runs every block (what ``tests/plan`` compares the extrapolation with)."""
    depth = backbone_depth(cfg)
    start = time.perf_counter()
    if full_depth or depth <= SAMPLE_DEPTHS[1] or not cfg.student.drop_path_uniform:
        (cost,) = _in_children([(cfg, world_size, processes_per_node, batch)])
    else:
        low, high = _in_children([(with_depth(cfg, d), world_size, processes_per_node, batch) for d in SAMPLE_DEPTHS])
        cost = extrapolate(low, high, SAMPLE_DEPTHS, depth)
    cost.seconds = time.perf_counter() - start
    return cost


def _in_children(jobs: list[tuple[Config, int, int, Mapping[str, Any]]]) -> list[StepCost]:
    """Each measurement in its own fresh process, all at once (the machine's cores share the work).

    Why a process each: the fake process group is global state, and a second FSDP2 build on fake tensors
    in one process crashed torch 2.14 natively (a segmentation fault in ``fully_shard``, measured here);
    a child that dies takes nothing with it and is reported with its exit code. Why spawned, not forked:
    a child forked from a process whose autograd engine or OpenMP pool has started aborts in its first
    backward ("Invalid thread pool", seen when one process plans twice)."""
    context = multiprocessing.get_context("spawn")
    children = []
    for job in jobs:
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_measure_in_child, args=(job, send), daemon=True)
        child.start()
        send.close()  # the child holds the only sending end: a child that dies closes the pipe
        children.append((child, receive))
    results = []
    for child, receive in children:
        try:
            kind, value = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(
                f"dinolite-plan: the measuring process died ({_describe(child.exitcode)}) before reporting"
            ) from None
        child.join()
        if kind != "ok":
            raise RuntimeError(f"dinolite-plan: the fake training step failed: {value}")
        results.append(value)
    return results


def _measure_in_child(job: tuple[Config, int, int, Mapping[str, Any]], send: Any) -> None:
    """The spawned child: measure one job in its fake world and send ``("ok", cost)`` or ``("error", text)``."""
    try:
        with fake_world(job[1], job[2]):
            payload: Any = ("ok", _measure(*job))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        payload = ("error", f"{type(exc).__name__}: {exc}")
    send.send(payload)
    send.close()


def _describe(exitcode: int | None) -> str:
    """A child's end as ``multiprocessing`` reports it (negative: killed by that signal)."""
    if exitcode is not None and exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


SAMPLE_DEPTHS = (2, 3)  # the two copies a deep backbone's cost is extrapolated from


def backbone_depth(cfg: Config) -> int:
    return int(backbone_kwargs(cfg.student, cfg.crops.global_crops_size)["depth"])


def with_depth(cfg: Config, depth: int) -> Config:
    """``cfg`` with a backbone of ``depth`` blocks (everything else unchanged)."""
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, depth=depth))


def _line(low: float, high: float, steps: int) -> int:
    return int(round(low + (high - low) * steps))


def extrapolate(low: StepCost, high: StepCost, depths: tuple[int, int], depth: int) -> StepCost:
    """The cost at ``depth`` blocks from the costs at ``depths = (d, d + 1)`` (each quantity is affine)."""
    if depths[1] != depths[0] + 1:
        raise ValueError(f"extrapolate needs consecutive depths, got {depths}")
    steps = depth - depths[0]
    by_category = {k: _line(low.by_category[k], high.by_category[k], steps) for k in low.by_category}
    ops = set(low.flops_by_op) | set(high.flops_by_op)
    flops_by_op = {k: _line(low.flops_by_op.get(k, 0), high.flops_by_op.get(k, 0), steps) for k in ops}
    lows = {(c.op, c.group_ranks): c for c in low.collectives}
    collectives = []
    for c in high.collectives:
        base = lows.get((c.op, c.group_ranks), Collective(c.op, c.group_ranks))
        collectives.append(
            Collective(
                c.op,
                c.group_ranks,
                calls=_line(base.calls, c.calls, steps),
                buffer_bytes=_line(base.buffer_bytes, c.buffer_bytes, steps),
            )
        )
    return dataclasses.replace(
        high,
        peak_bytes=sum(by_category.values()),
        by_category=by_category,
        flops=_line(low.flops, high.flops, steps),
        flops_by_op=flops_by_op,
        collectives=collectives,
        host_defaults={k: low.host_defaults.get(k, 0) + v for k, v in high.host_defaults.items()},
        extrapolated_from=depths,
    )


def _measure(cfg: Config, world_size: int, processes_per_node: int, batch: Mapping[str, Any]) -> StepCost:
    """Build the run of ``cfg`` as rank 0 of the fake world on fake tensors and account one step on ``batch``
    (collated for real by the caller: shapes such as iBOT's masked-token count come from real masks)."""
    start = time.perf_counter()
    host = HostValues()
    # torch's own code reads data pointers while checking storages; on fake tensors that only warns
    warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
    with fake_mode() as mode, host:
        env = DistributedEnv(rank=0, world_size=world_size, backend="fake", device="cpu")
        run = build_run(cfg, env, batches=lambda request: itertools.repeat(dict(batch)))
        run.start_at(cfg.optim.freeze_last_layer_epochs * run.epoch_length)  # the steady state, as benchmarks
        fake_batch = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        prime_optimizer(run)
        with FiniteValues(host):
            account = account_step(run, fake_batch)
        peak, split = account.memory.peak()
        cost = StepCost(
            world_size=world_size,
            processes_per_node=processes_per_node,
            batch_size_per_gpu=cfg.train.batch_size_per_gpu,
            peak_bytes=peak,
            by_category=split,
            flops=account.flops,
            flops_by_op=dict(account.flops_by_op),
            collectives=sorted(account.collectives.values(), key=lambda c: (c.op, c.group_ranks)),
            sharding=run.sharding,
            precision=run.precision,
            host_defaults=dict(collections.Counter(host.defaults)),
            seconds=time.perf_counter() - start,
        )
    return cost
