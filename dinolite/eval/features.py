"""Batched feature extraction from a frozen model, on CPU or GPU, split across distributed ranks.

Each rank runs ``model_fn`` on its share of the data; the (feature, label, index) rows of all ranks are
then all-gathered and ordered by sample index, keeping one row per index. The result is therefore the
same as a single-process pass whatever the number of ranks, and a sample seen by two ranks (e.g. a
padded sampler) is counted once.
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from dinolite.distributed import rank_and_world
from dinolite.progress import progress_bar


class ExtractedFeatures(NamedTuple):
    """Rows sorted by ``indices`` (the dataset index of each sample), one row per index."""

    features: torch.Tensor  # (N, F) float32, on CPU
    labels: torch.Tensor  # (N,) long
    indices: torch.Tensor  # (N,) long, strictly increasing


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world_size) of the initialised default process group, or (0, 1) without one."""
    return rank_and_world()


def shard_for_rank(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Strided share ``rank::world_size`` of a map-style dataset; iterable datasets are returned as is.

    Iterable datasets (``build_eval_dataset``) are already split across ranks by their builder.
    """
    if world_size == 1 or isinstance(dataset, IterableDataset):
        return dataset
    return Subset(dataset, range(rank, len(dataset), world_size))  # type: ignore[arg-type]


def _autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager:
    # bf16 autocast only pays off on CUDA; on CPU the fallback is plain fp32.
    if mixed_precision and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _all_gather_rows(rows: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate a (n_r, ...) tensor from every rank; n_r may differ between ranks."""
    comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    local = rows.to(comm_device) if comm_device is not None else rows
    count = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]).cpu()


def order_by_index(features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> ExtractedFeatures:
    """Sort rows by sample index and drop repeated indices (keeping the first)."""
    order = torch.argsort(indices, stable=True)
    indices, features, labels = indices[order], features[order], labels[order]
    keep = torch.ones_like(indices, dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    return ExtractedFeatures(features[keep], labels[keep], indices[keep])


@torch.inference_mode()
def extract_features(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    mixed_precision: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> ExtractedFeatures:
    """Run ``model_fn(images) -> (B, F)`` over ``dataset`` items ``(image, label, index)``.

    Under an initialised process group each rank extracts its share (map-style datasets are split here,
    iterable ones must come split, as ``build_eval_dataset(..., rank, world_size)`` does) and every rank
    returns the full, index-ordered result. ``mixed_precision`` enables bf16 autocast on CUDA only.
    Features are moved to CPU batch by batch so accelerator memory stays bounded.
    """
    device = torch.device(device)
    rank, world_size = distributed_rank_and_size()
    loader = DataLoader(
        shard_for_rank(dataset, rank, world_size),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        pin_memory=device.type == "cuda",
    )
    feats, labels, indices = [], [], []
    total = getattr(dataset, "num_samples", None)
    if total is None and hasattr(dataset, "__len__"):
        total = len(dataset)
    if total is not None:  # this rank's share of the images (samples are dealt round-robin)
        total = (total + world_size - 1 - rank) // world_size
    bar = progress_bar(total=total, desc=desc, unit="img", enabled=progress and rank == 0)
    for images, batch_labels, batch_indices in loader:
        bar.update(images.shape[0])
        with _autocast(device, mixed_precision):
            out = model_fn(images.to(device, non_blocking=True))
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"extract_features: model_fn must return (B, F) features, got {tuple(out.shape)}")
        feats.append(out.float().cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
        indices.append(torch.as_tensor(batch_indices, dtype=torch.long))

    bar.close()
    if feats:
        local = (torch.cat(feats), torch.cat(labels), torch.cat(indices))
    else:  # a rank with no samples still takes part in the gather; its width comes from the others
        local = (torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    if world_size > 1:
        local = _gather_all_ranks(*local, world_size=world_size)
    if local[0].shape[0] == 0:
        raise ValueError(f"extract_features: the dataset ({desc}) yielded no samples")
    return order_by_index(*local)


def _gather_all_ranks(
    features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Agree on the feature width first so that an empty rank can pad to the right shape.
    width = torch.tensor([features.shape[1] if features.shape[0] else 0], dtype=torch.long)
    widths = _all_gather_rows(width, world_size)
    dim = int(widths.max())
    if features.shape[0] == 0:
        features = torch.zeros(0, dim)
    return (
        _all_gather_rows(features, world_size),
        _all_gather_rows(labels, world_size),
        _all_gather_rows(indices, world_size),
    )
