"""Projector and predictor MLPs of the joint-embedding methods, with BatchNorm over the global batch.

One module covers the heads of SimCLR, Barlow Twins, SimSiam, BYOL and MoCo v3: ``num_layers`` linear
layers; every layer but the last is ``Linear(bias=False) -> BatchNorm1d -> ReLU``; the last is a
``Linear`` (bias only when no BatchNorm follows), optionally followed by a BatchNorm (``affine=False``
where the paper has it, e.g. SimSiam's and MoCo v3's projector output). ``num_layers = 0`` is the
identity (no projector / no predictor). Shapes per paper (ImageNet): SimCLR 2 layers 2048 -> 128;
Barlow Twins 3 x 8192; SimSiam projector 3 x 2048 with output BN, predictor 2048 -> 512 -> 2048;
BYOL 4096 -> 256 (projector and predictor); MoCo v3 (ViT) projector 3 x 4096 -> 256 with output BN,
predictor 2 layers 4096 -> 256 with output BN.

BatchNorm statistics are taken over the **global** batch when ``torch.distributed`` is initialised
(:class:`GlobalBatchNorm1d`): SimCLR, Barlow Twins, SimSiam and BYOL all train with synchronised BN,
and per-rank statistics would make the result depend on the number of ranks (and leak a per-rank
batch signature that contrastive losses can exploit). ``torch.nn.SyncBatchNorm`` only runs on
accelerators; this one runs on any backend (gloo included) and equals ``nn.BatchNorm1d`` on one process.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dinolite.distributed import all_reduce_sum_with_grad, get_world_size
from dinolite.dtypes import at_least_float32


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics are over every rank's rows (differentiably).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d``; without a process group (or in
    eval mode) it *is* ``nn.BatchNorm1d``. Distributed training mode: mean and biased variance of the
    global batch from all-reduced sums (two passes, so the variance is not a difference of large
    numbers), running statistics updated with the unbiased variance as ``nn.BatchNorm1d`` does; every
    rank ends with the same running statistics. Every rank must call it with the same number of rows.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and get_world_size() > 1):
            return super().forward(x)
        if x.ndim != 2:
            raise ValueError(f"GlobalBatchNorm1d expects (N, C) inputs, got {tuple(x.shape)}")
        count = torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        if n < 2:
            raise ValueError(f"GlobalBatchNorm1d: batch statistics need at least 2 rows in the global batch, got {n:g}")
        x32 = at_least_float32(x)  # bf16/fp16 inputs: statistics in fp32
        mean = all_reduce_sum_with_grad(x32.sum(dim=0)) / n
        centred = x32 - mean
        var = all_reduce_sum_with_grad(centred.square().sum(dim=0)) / n
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1)), alpha=factor)
        return out.to(x.dtype)


class ProjectionMLP(nn.Module):
    """``num_layers`` x (Linear [-> BN -> ReLU]) head; see the module docstring for the layout.

    Args:
        in_dim, hidden_dim, out_dim: widths (``out_dim`` is the embedding the loss sees).
        num_layers: 0 = identity (then ``out_dim`` is ``in_dim``), 1 = a single linear layer, ...
        batch_norm: BatchNorm after the hidden layers (the published heads all have it).
        last_batch_norm: BatchNorm after the last layer (SimSiam / MoCo v3 projector outputs).
        last_batch_norm_affine: whether that last BatchNorm has a learnable scale and shift.
        last_bias: whether the last Linear has a bias when no BatchNorm follows it (Barlow Twins' and
            VICReg's released projectors have none).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_batch_norm_affine: bool = False,
        last_bias: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"ProjectionMLP: num_layers must be >= 0, got {num_layers}")
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"ProjectionMLP: widths must be >= 1, got in={in_dim} hidden={hidden_dim} out={out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim if num_layers > 0 else in_dim
        # Named children (``fc0``, ``norm0``, ``act0``, ...): the optimizer exempts ``*norm*`` parameters
        # from weight decay by name, as the published recipes exempt BatchNorm.
        layers: dict[str, nn.Module] = {}
        width = in_dim
        for i in range(num_layers - 1):
            layers[f"fc{i}"] = nn.Linear(width, hidden_dim, bias=not batch_norm)
            if batch_norm:
                layers[f"norm{i}"] = GlobalBatchNorm1d(hidden_dim)
            layers[f"act{i}"] = nn.ReLU(inplace=True)
            width = hidden_dim
        if num_layers > 0:
            last = num_layers - 1
            layers[f"fc{last}"] = nn.Linear(width, out_dim, bias=last_bias and not last_batch_norm)
            if last_batch_norm:
                layers[f"norm{last}"] = GlobalBatchNorm1d(out_dim, affine=last_batch_norm_affine)
        self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
