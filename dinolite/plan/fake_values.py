"""Run the trainer's real code on fake tensors: what to answer when that code reads a value on the host.

Under ``FakeTensorMode`` a tensor has a shape, a dtype and a device but no values, so every host read
(``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``) raises. The training step reads a handful of
values, and none of them decides a shape: AdamW's step counter (``bias_correction = 1 - beta ** step``),
the finiteness checks (``torch.isfinite(loss)``, the flags all-reduced across ranks), the gradient norms
that clipping logs, and ``nn.init.trunc_normal_``'s rejection loop while the model is built.

:class:`HostValues` answers them:

* a small tensor (at most :data:`SMALL_NUMEL` elements) computed only from constants (``torch.tensor(0.)``,
  ``step += 1``, ``1 - beta ** step``) is also computed for real on the side (its "shadow"), and a read
  returns the true value: AdamW's bias corrections are exact;
* ``torch.isfinite`` / ``isnan`` / ``isinf`` of a small fake tensor is taken as "the values are finite"
  (the planner predicts a healthy step, not a diverging one);
* any other read of data (a loss, a norm, a flag all-reduced from data, a rejection mask) gets zero /
  False: a loss of 0, a norm of 0 (finite: no overflow skip), "no rank is bad", "no sample to redraw".

Every default answer is counted by call site (:attr:`HostValues.defaults`) so that a new read that could
change the step's shapes would show up in ``dinolite-plan --verbose``.
"""

from __future__ import annotations

import collections
import sys
import traceback
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

try:  # private modules (torch >= 2.1); the planner names them when they are missing
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
except ImportError as exc:  # pragma: no cover - every supported torch (>= 2.6) has them
    raise ImportError(
        f"dinolite-plan needs torch._subclasses.fake_tensor (FakeTensor, FakeTensorMode, unset_fake_temporarily), "
        f"missing from torch {torch.__version__}: {exc}"
    ) from exc

SMALL_NUMEL = 64  # tensors this small computed from constants get a real shadow (counters, scalars)
_FINITENESS = {
    torch.isfinite: True,
    torch.Tensor.isfinite: True,
    torch.isnan: False,
    torch.Tensor.isnan: False,
    torch.isinf: False,
    torch.Tensor.isinf: False,
}
_PLAIN = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_STORAGE_OPS = {"set_", "resize_", "resize_as_", "_set_", "record_stream", "_resize_output_"}
_LIFT = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


def _call_site() -> str:
    """``file:line`` of the innermost frame outside torch (who read the value)."""
    for frame in reversed(traceback.extract_stack(sys._getframe(2))):
        if "/torch/" not in frame.filename and "dinolite/plan/" not in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class HostValues(TorchDispatchMode):
    """Answers host reads of fake tensors (module docstring); enter it inside the ``FakeTensorMode``."""

    def __init__(self) -> None:
        super().__init__()
        self.shadow = WeakTensorKeyDictionary()
        self.defaults: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if any(t.__name__ == "DTensor" for t in types):
            return NotImplemented  # let DTensor turn itself into local ops first
        if func is torch.ops.aten._local_scalar_dense.default:
            return self._read(args[0])
        out = func(*args, **kwargs)
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if outputs and all(o.numel() <= SMALL_NUMEL for o in outputs):
            self._shadow(func, args, kwargs, outputs)
        return out

    def _read(self, tensor: torch.Tensor) -> bool | int | float:
        real = self.shadow.get(tensor)
        if real is not None:
            with unset_fake_temporarily():
                return real.item()
        self.defaults[_call_site()] += 1
        if tensor.dtype == torch.bool:
            return False
        return 0.0 if tensor.dtype.is_floating_point or tensor.dtype.is_complex else 0

    def _shadow(self, func: Any, args: tuple, kwargs: dict, outputs: list[torch.Tensor]) -> None:
        if func in _LIFT:  # torch.tensor(constant) entering fake mode: the constant is its own shadow
            if not isinstance(args[0], FakeTensor):
                with unset_fake_temporarily():
                    self.shadow[outputs[0]] = args[0].detach().clone()
            return
        if getattr(func, "namespace", "") != "aten" or func.__name__.split(".")[0] in _STORAGE_OPS:
            return  # collectives, FSDP's storage surgery: never re-run for real
        if torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
            return  # random numbers are data too: drawing them for real would not make them the run's
        flat = tree_flatten((args, kwargs))[0]
        if not all(isinstance(a, _PLAIN) for a in flat):
            return  # a storage, a generator, a process group...: not a pure function of its tensors
        inputs = [a for a in flat if isinstance(a, torch.Tensor)]
        if not all(a in self.shadow or not isinstance(a, FakeTensor) for a in inputs):
            return  # depends on data: no true value exists

        def real(value: Any) -> Any:
            return self.shadow.get(value, value) if isinstance(value, torch.Tensor) else value

        with unset_fake_temporarily():
            try:
                result = func(*tree_map(real, args), **tree_map(real, kwargs))
            except Exception:  # an op that cannot run on CPU for real: its outputs stay without shadow
                return
        reals = [r for r in tree_flatten(result)[0] if isinstance(r, torch.Tensor)]
        for fake, value in zip(outputs, reals):
            if not isinstance(value, FakeTensor):
                self.shadow[fake] = value


class FiniteValues(TorchFunctionMode):
    """``torch.isfinite`` (``isnan``, ``isinf``) of a small fake tensor: the values are taken as finite.

    A function mode, because ``isfinite`` is decomposed before a dispatch mode sees it."""

    def __init__(self, host: HostValues) -> None:
        super().__init__()
        self.host = host

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        finite = _FINITENESS.get(func)
        if finite is not None and isinstance(out, FakeTensor) and out.numel() <= SMALL_NUMEL:
            with unset_fake_temporarily():
                self.host.shadow[out] = torch.full(tuple(out.shape), finite)
        return out


def fake_mode() -> FakeTensorMode:
    """A fake-tensor mode that also accepts real tensors (the batch is collated for real, then faked)."""
    return FakeTensorMode(allow_non_fake_inputs=True)
