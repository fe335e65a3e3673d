"""Stop before a broken model is checkpointed: non-finite weights or gradients after the optimizer step.

The loss check (``step.check_finite``) runs before ``backward``; it cannot see an optimizer step that turns
finite weights into NaN/inf (a huge learning rate: the loss at that step was still finite). Such a step
must never reach a checkpoint, or ``latest`` points at a model that cannot train any more. So after every
step the loop calls :func:`check_finite_parameters`:

- cost: one sum per weight and gradient tensor (a vectorised reduction: no temporary, no host sync),
  added up per module and kind, one all-reduce of those ``2 x modules`` values across ranks, and one host
  sync. A sum is non-finite whenever an element is (NaN and inf propagate). It can also overflow for huge
  finite values, so a flagged sum is confirmed element-wise (``isfinite``) before anything is reported;
  that slow path runs only when something is already wrong. ``benchmarks/finite_check_overhead.py``
  measures it against the AdamW step (the sum costs a small fraction of it; a fused max-abs norm,
  ``get_total_norm(inf)``, cost more than the step itself on CPU: benchmarks/RESULTS.md);
- on failure (every rank raises, agreed by the all-reduce) the message names each module at fault, whether
  weights or gradients, and the first parameters with non-finite values (this rank's shards).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from dinolite.distributed import is_distributed
from dinolite.fsdp.sharding import local_shard


class NonFiniteStateError(FloatingPointError):
    """Weights or gradients became NaN/inf in an optimizer step; no checkpoint of them was written."""


def _sum(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sum of all elements (float32 accumulation): non-finite if any element is."""
    if not tensors:
        return torch.zeros((), device=device)
    return torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum().to(device)


def _any_rank(flags: torch.Tensor) -> list[float]:
    if is_distributed():
        dist.all_reduce(flags)
    return flags.tolist()


def _named_state(modules: Mapping[str, nn.Module]) -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None]]]:
    state: dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None]]] = {}
    seen: set[int] = set()
    for module_name, module in modules.items():
        entries = state.setdefault(module_name, [])
        for name, param in module.named_parameters():
            if id(param) in seen:  # a head shared by two names (ibot_head is dino_head) is checked once
                continue
            seen.add(id(param))
            grad = local_shard(param.grad.detach()) if param.grad is not None else None
            entries.append((f"{module_name}.{name}", local_shard(param.detach()), grad))
    return state


def check_finite_parameters(modules: Mapping[str, nn.Module], iteration: int, device: torch.device) -> None:
    """Raise :class:`NonFiniteStateError` on every rank if any rank holds a NaN/inf weight or gradient."""
    state = _named_state(modules)
    sums = []
    for entries in state.values():
        sums.append(_sum([weight for _, weight, _ in entries], device))
        sums.append(_sum([grad for _, _, grad in entries if grad is not None], device))
    flagged = (~torch.isfinite(torch.stack(sums))).to(torch.float32)
    if not any(_any_rank(flagged)):
        return
    # Something is flagged on some rank (every rank is here): name the tensors, element-wise.
    bad_names: list[list[str]] = []
    for entries in state.values():
        for kind in (1, 2):
            tensors = [(entry[0], entry[kind]) for entry in entries]
            bad_names.append([n for n, t in tensors if t is not None and not bool(torch.isfinite(t).all())])
    confirmed = _any_rank(torch.tensor([float(bool(names)) for names in bad_names], device=device))
    if not any(confirmed):
        return  # a sum overflowed on huge but finite values: nothing is NaN/inf
    faults = []
    for index, module_name in enumerate(state):
        for offset, what in enumerate(("weights", "gradients")):
            names = bad_names[2 * index + offset]
            if confirmed[2 * index + offset]:
                shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
                faults.append(f"{module_name} {what}" + (f" [{shown}]" if names else " [on another rank]"))
    raise NonFiniteStateError(
        f"non-finite values after the optimizer step of iteration {iteration}: {'; '.join(faults)}; stopping "
        "before this state is checkpointed (the latest checkpoint is the last good one). Try a lower "
        "optim.base_lr, longer optim.warmup_epochs or optim.clip_grad > 0"
    )
