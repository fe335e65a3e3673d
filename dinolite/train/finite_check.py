"""Stop before a broken model is checkpointed: non-finite weights or gradients after the optimizer step.

The loss check (``loop.check_finite``) runs before ``backward``; it cannot see an optimizer step that turns
finite weights into NaN/inf (a huge learning rate: the loss at that step was still finite). Such a step
must never reach a checkpoint, or ``latest`` points at a model that cannot train any more. So after every
step the loop calls :func:`check_finite_parameters`:

- cost: per trainable module, one fused infinity norm of its weights and one of its gradients
  (``torch.nn.utils.get_total_norm(..., inf)``: foreach kernels, no per-tensor host sync), one small
  all-reduce of those ``2 x modules`` values across ranks, and one host sync. The max-abs norm is finite
  exactly when every element is (NaN and inf propagate; finite values cannot overflow a maximum);
- on failure (every rank raises, agreed by the all-reduce) the message names each module at fault, whether
  weights or gradients, and the first parameters with non-finite values (this rank's shards).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from dinolite.dist import is_distributed


class NonFiniteStateError(FloatingPointError):
    """Weights or gradients became NaN/inf in an optimizer step; no checkpoint of them was written."""


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a plain tensor unchanged)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _max_abs(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    tensors = [t for t in tensors if t.numel() > 0]  # an empty shard has no infinity norm
    if not tensors:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(tensors, norm_type=float("inf")).to(device=device, dtype=torch.float32)


def _named_state(modules: Mapping[str, nn.Module]) -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None]]]:
    state: dict[str, list[tuple[str, torch.Tensor, torch.Tensor | None]]] = {}
    seen: set[int] = set()
    for module_name, module in modules.items():
        entries = state.setdefault(module_name, [])
        for name, param in module.named_parameters():
            if id(param) in seen:  # a head shared by two names (ibot_head is dino_head) is checked once
                continue
            seen.add(id(param))
            grad = _local(param.grad.detach()) if param.grad is not None else None
            entries.append((f"{module_name}.{name}", _local(param.detach()), grad))
    return state


def check_finite_parameters(modules: Mapping[str, nn.Module], iteration: int, device: torch.device) -> None:
    """Raise :class:`NonFiniteStateError` on every rank if any rank holds a NaN/inf weight or gradient."""
    state = _named_state(modules)
    norms = []
    for entries in state.values():
        norms.append(_max_abs([weight for _, weight, _ in entries], device))
        norms.append(_max_abs([grad for _, _, grad in entries if grad is not None], device))
    bad = (~torch.isfinite(torch.stack(norms))).to(torch.float32)
    if is_distributed():
        dist.all_reduce(bad)
    if not bool(bad.any()):
        return
    flags = bad.tolist()
    faults = []
    for index, (module_name, entries) in enumerate(state.items()):
        for offset, what in enumerate(("weights", "gradients")):
            if flags[2 * index + offset]:
                tensors = [(name, weight if what == "weights" else grad) for name, weight, grad in entries]
                names = [n for n, t in tensors if t is not None and not bool(torch.isfinite(t).all())]
                shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
                faults.append(f"{module_name} {what}" + (f" [{shown}]" if names else " [on another rank]"))
    raise NonFiniteStateError(
        f"non-finite values after the optimizer step of iteration {iteration}: {'; '.join(faults)}; stopping "
        "before this state is checkpointed (the latest checkpoint is the last good one). Try a lower "
        "optim.base_lr, longer optim.warmup_epochs or optim.clip_grad > 0"
    )
