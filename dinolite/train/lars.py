"""LARS: SGD with momentum whose step is rescaled per tensor by a trust ratio (You et al. 2017).

"Large Batch Training of Convolutional Networks" (You, Gitman, Ginsburg, 2017), in the form the Barlow
Twins and DirectCLR releases train with. For each parameter tensor ``w`` with gradient ``g``, in a group
with learning rate ``lr``, weight decay ``wd``, momentum ``m`` and trust coefficient ``eta``::

    d  = g + wd * w                                   (wd is 0 in a group the decay rule exempts)
    q  = eta * ||w|| / ||d||   if ||w|| > 0 and ||d|| > 0, else 1
    d  = q * d                                        (only where the group's ``lars_adaptation`` is true)
    mu = m * mu + d                                   (mu starts at 0: the first step takes mu = d)
    w  = w - lr * mu

The norms are Euclidean norms of the whole tensor. Groups built by :func:`dinolite.train.optim.get_param_groups`
with ``optim.optimizer=lars`` set ``lars_adaptation: False`` on 1-D parameters (biases, norm weights) when
``optim.lars_exclude_1d`` is true, as both releases do; which parameters are decayed is the decay rule's
business (``optim.decay_rule``), applied through each group's ``weight_decay``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """The update in the module docstring. Per group: ``lr``, ``weight_decay``, ``momentum``, ``eta`` and
    ``lars_adaptation`` (default true: every tensor's step is rescaled by its trust ratio)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0.0 <= momentum < 1.0 or eta <= 0:
            raise ValueError(
                f"LARS: invalid hyper-parameters lr={lr}, weight_decay={weight_decay}, momentum={momentum}, "
                f"eta={eta}; expected lr >= 0, weight_decay >= 0, 0 <= momentum < 1, eta > 0"
            )
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta, "lars_adaptation": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 - torch's Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    update = update.mul(trust_ratio(param, update, group["eta"]))
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss


def trust_ratio(param: torch.Tensor, update: torch.Tensor, eta: float) -> torch.Tensor:
    """``eta * ||param|| / ||update||``, or 1 where either norm is 0 (a 0-d tensor, no host sync)."""
    param_norm = torch.linalg.vector_norm(param)
    update_norm = torch.linalg.vector_norm(update)
    one = torch.ones_like(param_norm)
    ratio = eta * param_norm / torch.where(update_norm > 0, update_norm, one)
    return torch.where((param_norm > 0) & (update_norm > 0), ratio, one)
