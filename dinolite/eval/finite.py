"""Non-finite weights or features stop an evaluation, with an error naming what is non-finite.

A NaN travels silently through an evaluation: cosine similarities of NaN features rank arbitrarily, a
linear head's ``argmax`` over NaN logits is class 0, a segmentation head predicts one class. The result
is an accuracy near chance with exit code 0, indistinguishable from a backbone that learned nothing.
So the evaluations check what they are given:

- :func:`check_finite_module`: every floating-point parameter and buffer of a loaded backbone (once,
  at load; :func:`dinolite.eval.backbone.load_any_backbone`) and of a trained head;
- :func:`check_finite_rows`: extracted features (kNN, linear probe, online evaluation, the collapse
  report; the CLIs name the split) and segmentation feature maps, batch by batch.

:class:`NonFiniteError` is a ``ValueError``, so the command lines print it as one ``error:`` line.
"""

from __future__ import annotations

import torch
from torch import nn

SHOWN_NAMES = 5  # tensors named in a message; the count says how many more


class NonFiniteError(ValueError):
    """A backbone, head or feature tensor holds NaN or infinite values; the message names which."""


def _count(tensor: torch.Tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return ", ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if part)


def non_finite_tensors(module: nn.Module) -> list[str]:
    """``name (k NaN, j inf)`` for every floating-point parameter or buffer of ``module`` holding any."""
    found = []
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            found.append(f"{name} ({_count(tensor.detach())})")
    return found


def check_finite_module(module: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the parameters/buffers of ``module`` that are not finite."""
    bad = non_finite_tensors(module)
    if not bad:
        return
    shown = ", ".join(bad[:SHOWN_NAMES]) + (f" and {len(bad) - SHOWN_NAMES} more" if len(bad) > SHOWN_NAMES else "")
    raise NonFiniteError(
        f"{what}: {len(bad)} weight tensor(s) hold non-finite values: {shown}; evaluating it would report "
        "a chance-level number, not a measurement"
    )


def check_finite_rows(features: torch.Tensor, what: str, unit: str = "rows") -> None:
    """Raise :class:`NonFiniteError` when any row (sample) of ``features`` holds a NaN or infinity;
    ``unit`` names what a row is in the message."""
    finite = torch.isfinite(features)
    if bool(finite.all()):
        return
    rows = (~finite).flatten(1).any(dim=1) if features.ndim > 1 else ~finite
    first = int(rows.nonzero()[0, 0])
    raise NonFiniteError(
        f"{what}: {int(rows.sum())} of {features.shape[0]} {unit} hold non-finite values ({_count(features)}; "
        f"first: {unit[:-1] if unit.endswith('s') else unit} {first}); the backbone or the input normalisation "
        "produces NaN/inf"
    )
