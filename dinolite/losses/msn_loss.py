"""MSN: match the prototype assignment of masked anchor views to that of an unmasked target view.

Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning" (MSN), Sec. 3. With ``z``
the L2-normalised anchor embeddings (V anchor views x B images), ``z+`` the target embeddings (B, from
the EMA target encoder on the unmasked view), ``q`` the L2-normalised learnable prototypes (K, D) and
``tau`` the anchor temperature::

    p_i   = softmax(<z_i, q> / tau)                          anchor prediction (K,)
    p+_i  = sharpen(softmax(<z+_i, q> / tau), T)             target, no gradient
          = softmax(<z+_i, q> / (tau * T))                   (sharpen(p, T) = p^(1/T) / sum p^(1/T))
    L_ce  = 1/(V B) * sum_i H(p+_i, p_i) = -1/(VB) sum_i sum_k p+_ik log p_ik
    p_bar = mean of p_i over the GLOBAL batch (every anchor of every rank)
    L_rme = lambda * (log K - H(p_bar))                      ME-MAX regulariser, >= 0
    L     = L_ce + L_rme

Each anchor view of image ``b`` is matched to image ``b``'s target: anchor rows are view-major (all
images' view 0, then all images' view 1, ...), and the targets are tiled over the V views.
``use_sinkhorn`` balances the targets with 3 Sinkhorn-Knopp iterations over the global batch, started
from the sharpened probabilities as the released code does (the released config turns it on); the shared
:func:`sinkhorn_knopp` runs on ``log p+`` at temperature 1, whose ``exp`` is ``p+`` up to a constant that
its first normalisation removes.

Options of the released code (facebookresearch/msn 4388dc1; its recipe keeps each at its neutral value):
``label_smoothing`` ``s`` replaces each softmax by ``(1 - s) p + s / K`` (the prototypes' one-hot labels
smoothed, ``msn_train.py:187-191``, applied to anchors and targets before sharpening, ``losses.py:38-42``;
with ``s > 0`` the target is ``sharpen((1 - s) p + s / K, T)``); ``entropy_weight`` adds
``w * 1/(VB) sum_i H(p_i)``, the mean entropy of the anchor predictions (``losses.py:74-76``: minimising it
makes each prediction confident); the sharpening temperature may be passed per call
(``forward(..., sharpen_temperature=T)``, the released linear schedule of ``msn_train.py:257-259``).

Collapse switches (paper, Sec. 3 and its ablation): without sharpening (``sharpen=False``: T = 1) the
targets can be uniform and the trivial solution "every prediction uniform" is optimal for ``L_ce`` while
ME-MAX is satisfied; without ME-MAX (``me_max=False``) every image can be assigned to the same
prototype. ``log K`` only shifts the value so that a perfectly balanced ``p_bar`` scores 0.

Distributed: ``p_bar`` is all-reduced with :func:`dinolite.distributed.all_reduce_sum_with_grad` (its backward
sums the gradients of every rank's copy). Each rank's loss is its local ``L_ce`` plus the
same ``L_rme``; averaging gradients over ranks (as FSDP/DDP do) then gives exactly the gradient of the
single-process loss on the concatenated batch (``tests/losses/test_msn_loss.py`` checks it). fp32 inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinolite.distributed import all_reduce_sum, all_reduce_sum_with_grad
from dinolite.losses.centering import sinkhorn_knopp


def global_mean_with_grad(values: Tensor) -> Tensor:
    """Mean over the rows of ``values (N, K)`` on all ranks, differentiable through the all-reduce."""
    row_sum = all_reduce_sum_with_grad(values.sum(dim=0))
    count = all_reduce_sum(float(values.shape[0]), values.device)
    return row_sum / max(count, 1.0)


class MSNLoss(nn.Module):
    """``forward(anchor (V*B, D), target (B, D), prototypes (K, D)) -> dict`` of loss terms and stats.

    Returns ``{"loss", "cross_entropy", "me_max", "entropy", "anchor_probs", "target_probs"}`` (``entropy``
    the weighted entropy term, zero at ``entropy_weight=0``; the two probability tensors detached, for the
    collapse monitor).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        sharpen_temperature: float = 0.25,
        me_max_weight: float = 1.0,
        sharpen: bool = True,
        me_max: bool = True,
        use_sinkhorn: bool = False,
        label_smoothing: float = 0.0,
        entropy_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0 or sharpen_temperature <= 0:
            raise ValueError(f"MSNLoss: temperatures must be > 0, got {temperature}, {sharpen_temperature}")
        if me_max_weight < 0 or entropy_weight < 0:
            raise ValueError(
                f"MSNLoss: me_max_weight and entropy_weight must be >= 0, got {me_max_weight}, {entropy_weight}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"MSNLoss: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.temperature = float(temperature)
        self.sharpen = bool(sharpen)
        self.sharpen_temperature = float(sharpen_temperature) if sharpen else 1.0
        self.me_max_weight = float(me_max_weight) if me_max else 0.0
        self.use_sinkhorn = bool(use_sinkhorn)
        self.label_smoothing = float(label_smoothing)
        self.entropy_weight = float(entropy_weight)

    def logits(self, embeddings: Tensor, prototypes: Tensor) -> Tensor:
        """Cosine similarities ``<z, q>`` (N, K) of L2-normalised embeddings and prototypes."""
        return F.normalize(embeddings.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).t()

    def log_probs(self, logits: Tensor) -> Tensor:
        """``log((1 - s) softmax(logits) + s / K)``: the log-softmax itself without label smoothing."""
        log_p = F.log_softmax(logits, dim=-1)
        s = self.label_smoothing
        if s == 0:
            return log_p
        return torch.logaddexp(log_p + math.log1p(-s), torch.full_like(log_p, math.log(s / logits.shape[-1])))

    @torch.no_grad()
    def target_probs(self, target: Tensor, prototypes: Tensor, sharpen_temperature: float | None = None) -> Tensor:
        """Sharpened (optionally Sinkhorn-balanced) target assignments ``p+`` (B, K) at ``sharpen_temperature``
        (default: the constructor's; ignored with ``sharpen=False``)."""
        T = self._sharpen_temperature(sharpen_temperature)
        logits = self.logits(target, prototypes) / self.temperature
        if self.label_smoothing == 0:
            sharpened = logits / T  # softmax(l / tau)^(1/T), normalised = softmax(l / (tau T))
        else:
            sharpened = self.log_probs(logits) / T
        if self.use_sinkhorn:
            return sinkhorn_knopp(F.log_softmax(sharpened, dim=-1), temperature=1.0, n_iterations=3)
        return F.softmax(sharpened, dim=-1)

    def _sharpen_temperature(self, value: float | None) -> float:
        if value is None or not self.sharpen:
            return self.sharpen_temperature
        if value <= 0:
            raise ValueError(f"MSNLoss: the sharpening temperature must be > 0, got {value}")
        return float(value)

    def forward(
        self, anchor: Tensor, target: Tensor, prototypes: Tensor, sharpen_temperature: float | None = None
    ) -> dict[str, Tensor]:
        if anchor.ndim != 2 or target.ndim != 2 or prototypes.ndim != 2:
            raise ValueError(
                f"MSNLoss: anchor (V*B, D), target (B, D), prototypes (K, D) expected, got "
                f"{tuple(anchor.shape)}, {tuple(target.shape)}, {tuple(prototypes.shape)}"
            )
        if target.shape[0] == 0 or anchor.shape[0] % target.shape[0]:
            raise ValueError(
                f"MSNLoss: {anchor.shape[0]} anchor rows are not a whole number of views of {target.shape[0]} targets"
            )
        n_views = anchor.shape[0] // target.shape[0]
        targets = self.target_probs(target, prototypes, sharpen_temperature).repeat(n_views, 1)
        log_probs = self.log_probs(self.logits(anchor, prototypes) / self.temperature)
        cross_entropy = -(targets * log_probs).sum(dim=-1).mean()
        probs = log_probs.exp()
        zero = torch.zeros((), device=anchor.device)
        me_max, entropy = zero, zero
        if self.me_max_weight > 0:
            me_max = self.me_max_weight * (math.log(prototypes.shape[0]) - entropy_of(global_mean_with_grad(probs)))
        if self.entropy_weight > 0:
            entropy = self.entropy_weight * -(probs * log_probs).sum(dim=-1).mean()
        return {
            "loss": cross_entropy + me_max + entropy,
            "cross_entropy": cross_entropy,
            "me_max": me_max,
            "entropy": entropy,
            "anchor_probs": probs.detach(),
            "target_probs": targets[: target.shape[0]].detach(),
        }


def entropy_of(probs: Tensor) -> Tensor:
    """``H(p) = -sum_k p_k log p_k`` of one distribution (K,) (``0 log 0 = 0``)."""
    return -(probs * torch.log(probs.clamp(min=1e-12))).sum()
