"""What one step costs, measured while it runs: memory by category, collectives, FLOPs.

:class:`StepAccount` is one ``TorchDispatchMode`` that sees every op of the step (on fake or real tensors):

* memory (:class:`MemoryAccount`): the birth and death of every tensor storage, by category, and the peak
  found afterwards (so that a storage relabelled later, a gradient born in backward, counts as what it
  became). It follows what ``torch.distributed._tools.mem_tracker.MemTracker`` does (storages, weak
  references, storage resizes), built here because that tracker registers gradient hooks on every
  parameter it meets (the EMA teacher's frozen ones refuse them), labels FSDP2's sharded gradients as
  temporaries, and updates every module's statistics after every op (minutes for a ViT-g step);
* collectives: every c10d collective, its group's ranks and its buffer (the unsharded size);
* FLOPs: torch's own formulas (``torch.utils.flop_counter``), forward and backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import weakref
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

try:  # torch.utils.flop_counter's table of per-op FLOP formulas (public module, private name)
    import torch.utils.flop_counter as _flop_counter
    from torch.utils.flop_counter import flop_registry as _FLOP_REGISTRY
except ImportError as exc:  # pragma: no cover - present in torch >= 2.1
    raise ImportError(
        f"dinolite-plan needs torch.utils.flop_counter.flop_registry (torch {torch.__version__}): {exc}"
    ) from exc


def _cpu_attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(_flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape))


def _cpu_attention_backward_flops(
    grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any
) -> int:
    return int(_flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape))


# SDPA's CPU kernels, which torch's table leaves out (it lists the CUDA flash / efficient / cuDNN ones);
# the fake step runs on the CPU device, so its attention dispatches to these. Same formulas as the CUDA ones.
_CPU_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def _resolve_process_group(name: str) -> dist.ProcessGroup:
    """The group a functional collective names (``torch.distributed.distributed_c10d``, private)."""
    from torch.distributed.distributed_c10d import _resolve_process_group as resolve  # private: only if used

    return resolve(name)


CATEGORY_ORDER = (
    "parameters",
    "gathered parameters",
    "gradients",
    "optimizer state",
    "activations",
    "temporary",
    "inputs",
)


@dataclasses.dataclass
class _Block:
    """One storage's life at one size: ``[born, died)`` in op counts."""

    nbytes: int
    category: str
    born: int
    died: int | None = None
    # freed on another thread than the step's: a collective's buffer that a process-group backend's worker
    # thread (gloo's) released after the step's thread had dropped it, so ``died`` is late by a
    # thread-timing-dependent number of ops (a fake process group never does this)
    died_elsewhere: bool = False


class MemoryAccount:
    """Every tensor storage alive during a step, by category (module docstring); fed by :class:`StepAccount`.

    Categories: what exists before the step (``adopt``: parameters, optimizer state, the batch); storages
    resized by FSDP2 (its gathered, unsharded parameters: only FSDP resizes storages); what forward creates
    (activations); what backward creates (temporary: activation gradients, recomputed activations,
    reduce-scatter buffers), except the storages that end up as parameter gradients (relabelled
    gradients by :meth:`label_gradients`); what the optimizer step creates (optimizer state). The peak is
    found afterwards by sweeping the births and deaths, so relabelling applies at the peak too.
    """

    def __init__(self) -> None:
        self.ops = 0
        self.phase = "activations"
        self._blocks: list[_Block] = []
        self._live: dict[int, tuple[weakref.ref, _Block]] = {}  # id(storage) -> its current block

    def adopt(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        for tensor in tensors:
            self.see(tensor, category)

    def see(self, tensor: torch.Tensor, category: str | None = None) -> None:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None and entry[0]() is storage:
            if category is not None and entry[1].category != category:
                entry[1].category = category
            return
        self._start(storage, category or self.phase)

    def _start(self, storage: torch.UntypedStorage, category: str) -> None:
        key = id(storage)
        block = _Block(storage.nbytes(), category, self.ops)
        self._blocks.append(block)
        self._live[key] = (weakref.ref(storage, functools.partial(self._end, key, block)), block)

    def _end(self, key: int, block: _Block, _ref: object = None) -> None:
        if block.died is None:
            block.died = self.ops
            block.died_elsewhere = threading.current_thread() is not threading.main_thread()
        entry = self._live.get(key)
        if entry is not None and entry[1] is block:
            del self._live[key]

    def resized(self, storage: torch.UntypedStorage) -> None:
        """FSDP2 freed (size 0) or re-allocated its unsharded parameters' storage."""
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None:
            self._end(key, entry[1])
        if storage.nbytes() > 0:
            self._start(storage, "gathered parameters")

    def label_gradients(self, params: Iterable[torch.Tensor]) -> None:
        for param in params:
            if param.grad is not None:
                self.see(param.grad, "gradients")

    def peak(self) -> tuple[int, dict[str, int]]:
        """(peak bytes, bytes by category at that moment) over the whole account."""
        best, best_split, _ = self._sweep()
        return best, best_split

    def late_bytes_at_peak(self) -> int:
        """Bytes alive at the peak only because another thread freed them (``_Block.died_elsewhere``):
        the peak of the same step with every storage freed when the step's thread let go of it lies in
        ``[peak - late_bytes_at_peak, peak]``."""
        return self._sweep()[2]

    def _sweep(self) -> tuple[int, dict[str, int], int]:
        # At one op count, its outputs are born first, then what died after it: the peak is measured
        # after the births of each op.
        events: list[tuple[int, int, int]] = []  # (op, 0 birth / 1 death, block index)
        for index, block in enumerate(self._blocks):
            events.append((block.born, 0, index))
            if block.died is not None:
                events.append((block.died, 1, index))
        events.sort()
        current = dict.fromkeys(CATEGORY_ORDER, 0)
        total, late, best, best_split, best_late = 0, 0, -1, dict(current), 0
        for position, (op, is_death, index) in enumerate(events):
            block = self._blocks[index]
            sign = -1 if is_death else 1
            current[block.category] += sign * block.nbytes
            total += sign * block.nbytes
            late += sign * block.nbytes if block.died_elsewhere else 0
            following = events[position + 1] if position + 1 < len(events) else None
            births_done = not is_death and (following is None or following[0] != op or following[1] == 1)
            if births_done and total > best:
                best, best_split, best_late = total, dict(current), late
        return max(best, 0), best_split, best_late


@dataclasses.dataclass
class Collective:
    """One kind of collective over one group: how often per step and its buffer bytes in all."""

    op: str
    group_ranks: tuple[int, ...]
    calls: int = 0
    buffer_bytes: int = 0  # the full (unsharded) buffer: all-gather output, reduce-scatter input, all-reduce


def _nbytes(values: Iterable[Any]) -> int:
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _group_ranks(args: Iterable[Any]) -> tuple[int, ...]:
    """The ranks of the group a collective runs on: eager c10d ops carry the group boxed as a
    ``ScriptObject``, functional ones name it."""
    for value in args:
        if isinstance(value, torch.ScriptObject):
            try:
                return tuple(dist.get_process_group_ranks(dist.ProcessGroup.unbox(value)))
            except (RuntimeError, ValueError, KeyError, AttributeError):
                continue
        if isinstance(value, dist.ProcessGroup):
            return tuple(dist.get_process_group_ranks(value))
        if isinstance(value, str) and value:
            try:
                return tuple(dist.get_process_group_ranks(_resolve_process_group(value)))
            except (RuntimeError, ValueError, KeyError):
                continue
    return tuple(range(dist.get_world_size())) if dist.is_initialized() else (0,)


def _kind(name: str) -> str | None:
    if "reduce_scatter" in name:
        return "reduce_scatter"
    if "allgather" in name or "all_gather" in name:
        return "all_gather"
    if "allreduce" in name or "all_reduce" in name:
        return "all_reduce"
    if "broadcast" in name:
        return "broadcast"
    if "alltoall" in name or "all_to_all" in name:
        return "all_to_all"
    return None


def _collective(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple[str, tuple[int, ...], int] | None:
    """(kind, group ranks, buffer bytes) when ``func`` is a c10d collective (eager ``c10d`` or functional)."""
    namespace = getattr(func, "namespace", "")
    if namespace not in ("c10d", "_c10d_functional") or "wait" in func.__name__:
        return None
    kind = _kind(func.__name__)
    if kind is None:
        return None
    flat_in = tree_flatten((args, kwargs))[0]
    outputs = _nbytes(tree_flatten(out)[0]) if namespace == "_c10d_functional" else 0
    ranks = _group_ranks(flat_in)
    return kind, ranks, _buffer_bytes(kind, namespace, flat_in, _nbytes(flat_in), outputs, len(ranks))


class StepAccount(TorchDispatchMode):
    """One dispatch mode that accounts a step: every storage its ops create (:class:`MemoryAccount`), the
    FLOPs of every op torch's flop counter knows (``torch.utils.flop_counter``'s registry: matmuls,
    convolutions, attention; forward and backward) and every collective (:attr:`collectives`).

    Enter it with :meth:`tracking`, which also follows FSDP2's storage resizes and the optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryAccount()
        self.flops = 0
        self.flops_by_op: dict[str, int] = {}
        self.collectives: dict[tuple[str, tuple[int, ...]], Collective] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        memory = self.memory
        memory.ops += 1
        if memory.phase == "activations" and torch._C._current_graph_task_id() != -1:
            phase = "temporary"  # inside autograd's backward
        else:
            phase = memory.phase
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                _see_new(memory, value, phase)
        counter = _FLOP_REGISTRY.get(func._overloadpacket) or _CPU_FLOPS.get(func._overloadpacket)
        if counter is not None:
            flops = int(counter(*args, **kwargs, out_val=out))
            self.flops += flops
            name = str(func._overloadpacket).rsplit(".", 1)[-1]
            self.flops_by_op[name] = self.flops_by_op.get(name, 0) + flops
        found = _collective(func, args, kwargs, out)
        if found is not None:
            kind, ranks, nbytes = found
            entry = self.collectives.setdefault((kind, ranks), Collective(kind, ranks))
            entry.calls += 1
            entry.buffer_bytes += nbytes
        return out

    @contextlib.contextmanager
    def tracking(self) -> Iterator[StepAccount]:
        """This mode, plus storage resizes (FSDP2's gathered parameters) and the optimizer phase."""
        original_resize = torch.UntypedStorage.resize_
        memory = self.memory

        def resize(storage: torch.UntypedStorage, size: int) -> Any:
            result = original_resize(storage, size)
            memory.resized(storage)
            return result

        def before_step(*_: Any) -> None:
            memory.phase = "optimizer state"

        def after_step(*_: Any) -> None:
            memory.phase = "activations"

        hooks = (register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step))
        torch.UntypedStorage.resize_ = resize  # type: ignore[method-assign]
        try:
            with self:
                yield self
        finally:
            torch.UntypedStorage.resize_ = original_resize  # type: ignore[method-assign]
            for hook in hooks:
                hook.remove()


def _see_new(memory: MemoryAccount, tensor: torch.Tensor, phase: str) -> None:
    """Account ``tensor``'s storage under ``phase`` if it is new (an op's output that is a view or an
    in-place result shares a storage already accounted)."""
    if tensor.is_meta:
        return
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    storage = local.untyped_storage()
    entry = memory._live.get(id(storage))
    if entry is not None and entry[0]() is storage:
        return
    memory._start(storage, phase)


def _buffer_bytes(kind: str, namespace: str, flat_in: list, inputs: int, outputs: int, group: int) -> int:
    """The unsharded buffer of one collective (what a ring moves ``(n-1)/n`` of per rank)."""
    if namespace == "_c10d_functional":
        return max(inputs, outputs)
    if kind in ("all_gather", "reduce_scatter"):
        # in-place c10d: output and input tensors are both arguments; full = shard * group
        return inputs * group // (group + 1)
    return inputs
