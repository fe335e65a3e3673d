"""MoCo v3's symmetrised InfoNCE: queries from the online predictor, keys from the momentum encoder.

Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers" (MoCo v3), Sec. 3
and Alg. 1; the InfoNCE of van den Oord et al. 2018. With ``q_n`` the predictor output of view A of image n
on this rank, ``k_m`` the momentum encoder's projection of view B of image m over the *global* batch of ``N``
images (every rank's keys, gathered), both L2-normalised, and the temperature ``tau``::

    ctr(q, k) = 2 tau * (1 / B) * sum_n -log( exp(q_n . k_{r B + n} / tau) / sum_{m < N} exp(q_n . k_m / tau) )
    L         = ctr(q^A, k^B) + ctr(q^B, k^A)

with ``B`` this rank's images and ``r`` its rank: the positive of query ``n`` is the key of the same image in
the other view, its ``N - 1`` negatives the keys of every other image of the global batch. The ``2 tau``
factor is the released code's (facebookresearch/moco-v3 ``c349e6e``, ``moco/builder.py:73``): it offsets the
``1 / tau`` that the gradient of ``q . k / tau`` carries, so the gradient's scale depends less on ``tau``. The two
directions are summed, not averaged (``moco/builder.py:96``).

Keys carry no gradient (the momentum encoder is not trained by back-propagation; the release gathers them
with a gradient-free all-gather): they are detached here whatever the caller passes. Each rank averages over
its own ``B`` queries, so with the trainer's averaging of gradients over ranks, ``W`` ranks of ``B`` images
train exactly as one rank of ``W * B`` (every rank must hold the same ``B``). Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import all_gather_with_grad, get_rank
from dinolite.dtypes import at_least_float32_dtype


def _check(q: Tensor, k: Tensor, temperature: float) -> None:
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(
            f"moco_v3_loss: queries and keys must both be (B, D), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"moco_v3_loss: temperature must be > 0, got {temperature}")


def moco_v3_contrastive(q: Tensor, k: Tensor, temperature: float = 1.0, gather_distributed: bool = True) -> Tensor:
    """One direction, ``ctr(q, k)`` of the module docstring: ``2 tau`` times the cross-entropy of each query
    against the keys of the global batch, its positive being the key of the same image."""
    _check(q, k, temperature)
    dtype = at_least_float32_dtype(q.dtype)  # bf16 under autocast: fp32
    queries = F.normalize(q.to(dtype), dim=1)
    keys = F.normalize(k.detach().to(dtype), dim=1)
    offset = 0
    if gather_distributed:
        keys, offset = all_gather_with_grad(keys), get_rank() * q.shape[0]
    logits = queries @ keys.t() / temperature  # (B, N): this rank's queries against every key
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


def moco_v3_loss(
    q_a: Tensor, q_b: Tensor, k_a: Tensor, k_b: Tensor, temperature: float = 1.0, gather_distributed: bool = True
) -> Tensor:
    """The symmetrised loss ``ctr(q_a, k_b) + ctr(q_b, k_a)`` (module docstring); ``q_*`` (B, D) the online
    predictor's outputs of views A and B, ``k_*`` the momentum encoder's. ``gather_distributed=False`` keeps
    this rank's keys only (negatives from the local batch)."""
    return moco_v3_contrastive(q_a, k_b, temperature, gather_distributed) + moco_v3_contrastive(
        q_b, k_a, temperature, gather_distributed
    )


class MoCoV3Loss(nn.Module):
    """Module form of :func:`moco_v3_loss`; no parameters, no state. :meth:`directed` is one direction."""

    def __init__(self, temperature: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MoCoV3Loss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, q_a: Tensor, q_b: Tensor, k_a: Tensor, k_b: Tensor) -> Tensor:
        return moco_v3_loss(q_a, q_b, k_a, k_b, self.temperature, self.gather_distributed)

    def directed(self, q: Tensor, k: Tensor) -> Tensor:
        """``ctr(q, k)``: the queries of one view against the keys of the other (the asymmetric setting)."""
        return moco_v3_contrastive(q, k, self.temperature, self.gather_distributed)
