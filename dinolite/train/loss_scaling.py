"""Dynamic loss scaling for fp16 training, over FSDP2-sharded gradients.

Micikevicius et al. 2018 ("Mixed Precision Training"): fp16 gradients below ~6e-8 flush to zero, so the
loss is multiplied by a scale ``S`` before backward and the gradients by ``1/S`` before the optimizer
step. ``S`` is dynamic: a step whose gradients hold an inf/NaN (the scaled values overflowed) is
skipped and ``S <- S * backoff_factor``; after ``growth_interval`` steps without overflow
``S <- S * growth_factor``. DINOv2 trains in fp16 this way (``compute_precision.grad_scaler``).

Why not ``torch.amp.GradScaler`` as is: with FSDP2 each rank holds a shard of every gradient, and
GradScaler decides "overflow" from the local shard only, so ranks could disagree on skipping a step and
drift apart. Here the decision comes from the global gradient norms the loop already computes for
clipping (:func:`dinolite.fsdp.clipping.clip_grad_norm_` all-reduces over the shards): any inf/NaN in
any shard makes that norm non-finite on every rank, so every rank skips together, with no extra
communication. Unscaling multiplies each rank's local shard in place.

Where the scale starts: where DINOv2's does. Its released code builds ``ShardedGradScaler()`` with torch's
defaults (``dinov2/train/ssl_meta_arch.py``): ``init_scale=2**16``, ``growth_factor=2``, ``backoff_factor=0.5``,
``growth_interval=2000``, the defaults below (``tests/train/test_loss_scaling.py`` checks them against
torch's). A small model or batch overflows at that scale for its first steps (the demo at the sizes of
``tests/train/test_fp16_training.py``: the DINO head's fp16 weight gradients, norm ~60-80 unscaled, pass
65504 in an element above a scale of ~2^10, so 6 of its first 8 steps are skipped while the scale halves
from 2^16 to 2^10). DINOv2's scaler would skip the same steps: it checks the same gradients for inf/NaN
and halves the same scale. Starting lower would depart from DINOv2 in every run to spare a toy run a few
steps.

State (``scale``, ``growth_tracker``) is a checkpoint Stateful, so a resumed run continues with the same
scale (exact resume).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from dinolite.fsdp.sharding import local_shard


class LossScaler:
    """Loss scaling for fp16; ``enabled=False`` (bf16 / fp32, or ``train.grad_scaler=false``) is a no-op."""

    def __init__(
        self,
        enabled: bool,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError(
                f"LossScaler: init_scale={init_scale} > 0, growth_factor={growth_factor} > 1, "
                f"0 < backoff_factor={backoff_factor} < 1, growth_interval={growth_interval} >= 1 expected"
            )
        self.enabled = enabled
        self.scale = float(init_scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.growth_tracker = 0  # steps without overflow since the last change of scale
        self.skipped_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, parameters: Iterable[torch.Tensor]) -> None:
        """Divide every gradient by the scale, in place (each rank its local shard)."""
        if not self.enabled:
            return
        inverse = 1.0 / self.scale
        with torch.no_grad():
            for param in parameters:
                if param.grad is not None:
                    grad = local_shard(param.grad)
                    grad.mul_(inverse)

    def update(self, grad_norms: Mapping[str, float]) -> bool:
        """After unscaling and measuring the global norms: ``True`` to take the optimizer step, ``False``
        when a norm is inf/NaN (the step is skipped, the scale backs off). Always ``True`` when disabled."""
        if not self.enabled:
            return True
        finite = all(math.isfinite(float(norm)) for norm in grad_norms.values())
        if not finite:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped_steps += 1
            return False
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0
        return True

    # checkpoint Stateful -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
