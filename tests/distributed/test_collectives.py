"""Rank queries and scalar collectives: identities without a process group, true reductions with two ranks."""

from __future__ import annotations

from dinolite.distributed.collectives import (
    all_reduce_max,
    all_reduce_sum,
    any_rank,
    barrier,
    get_rank,
    get_world_size,
    is_distributed,
    rank_and_world,
)
from tests.gloo_ranks import run_on_ranks


def test_without_a_process_group_everything_is_one_process():
    assert not is_distributed()
    assert (get_rank(), get_world_size(), rank_and_world()) == (0, 1, (0, 1))
    assert all_reduce_max(2.5) == 2.5 and all_reduce_sum(-1.5) == -1.5
    assert any_rank(True) and not any_rank(False)
    barrier()  # returns at once


def _on_rank(rank: int, world: int) -> dict:
    result = {
        "rank_and_world": list(rank_and_world()),
        "max": all_reduce_max(rank + 1.5),
        "sum": all_reduce_sum(rank + 1.5),
        "any_when_only_the_last_rank_says_so": any_rank(rank == world - 1),
        "any_when_no_rank_says_so": any_rank(False),
    }
    barrier()
    return result


def test_two_ranks_reduce_over_both_and_agree(tmp_path):
    results = run_on_ranks(_on_rank, 2, tmp_path)
    for rank, result in enumerate(results):
        assert result["rank_and_world"] == [rank, 2]
        assert result["max"] == 2.5 and result["sum"] == 4.0
        assert result["any_when_only_the_last_rank_says_so"] is True
        assert result["any_when_no_rank_says_so"] is False
