"""Centering and Sinkhorn-Knopp across 2 gloo processes equal one process on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinolite.losses import DINOLoss, iBOTPatchLoss
from tests.gloo_ranks import run_on_ranks

K = 6
# uneven split, as iBOT's masked patches are: rank 0 holds 3 rows, rank 1 holds 5
SPLIT = (3, 5)


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(sum(SPLIT), K, generator=generator) * 3


def _compute(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    dino, ibot = DINOLoss(out_dim=K), iBOTPatchLoss(out_dim=K)
    ibot.center.fill_(0.5)
    out = {"sinkhorn": dino.sinkhorn_knopp_teacher(logits, teacher_temp=0.07, n_iterations=3)}
    out["softmax"] = ibot.softmax_center_teacher(logits, teacher_temp=0.07)
    ibot.update_center(logits)
    dino.update_center(logits)
    out["ibot_center"], out["dino_center"] = ibot.center.clone(), dino.center.clone()
    # a rank with no row at all (iBOT with nothing masked) must still take part and get an empty result
    rank0_rows_only = logits if logits.shape[0] == SPLIT[0] else logits[:0]
    out["sinkhorn_empty_on_rank1"] = dino.sinkhorn_knopp_teacher(rank0_rows_only, teacher_temp=0.07)
    return out


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    start = sum(SPLIT[:rank])
    return _compute(_batch()[start : start + SPLIT[rank]])


@pytest.mark.numerics
def test_two_process_centering_equals_single_process(tmp_path: Path):
    ranks = run_on_ranks(_on_rank, 2, tmp_path)

    full = _batch()
    reference = _compute(full)
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), reference["sinkhorn"])
    torch.testing.assert_close(torch.cat([r["softmax"] for r in ranks]), reference["softmax"])
    for key in ("ibot_center", "dino_center"):
        for r in ranks:
            torch.testing.assert_close(r[key], reference[key])
    # rank 1 contributed nothing: rank 0's rows equal Sinkhorn on rank 0's rows alone
    torch.testing.assert_close(ranks[0]["sinkhorn_empty_on_rank1"], _compute(full[: SPLIT[0]])["sinkhorn"])
    assert ranks[1]["sinkhorn_empty_on_rank1"].shape == (0, K)
