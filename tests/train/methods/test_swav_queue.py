"""SwAV's feature queue (dinolite/train/methods/swav_queue.py): the release's length rounding, newest-first
filling, use once full, and the rows of each rank."""

from __future__ import annotations

import pytest
import torch

from dinolite.config import ConfigError
from dinolite.train.methods.swav_queue import FeatureQueue, gather_rows, rows_per_rank


@pytest.mark.parametrize(
    ("length", "batch", "world", "rows"),
    [(3840, 64, 4, 960), (3840, 64, 1, 3840), (1000, 64, 2, 448), (512, 64, 1, 512)],
)
def test_rows_per_rank_rounds_down_to_a_multiple_of_the_global_batch_as_released(length, batch, world, rows):
    # main_swav.py: queue_length -= queue_length % (batch_size * world_size); each rank: queue_length // world_size
    assert rows_per_rank(length, batch, world) == rows
    assert rows % batch == 0


def test_a_queue_shorter_than_the_global_batch_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"swav.queue_length.*100.*64 x 2 ranks = 128"):
        rows_per_rank(100, 64, 2)


def test_the_queue_fills_newest_first_and_is_used_once_full():
    queue = FeatureQueue(queue_length=6, n_crops=2, batch_per_rank=2, dim=3, world=1)
    batches = [torch.full((2, 3), float(i + 1)) for i in range(4)]
    for i, batch in enumerate(batches):
        assert (queue.own(0) is None) == (i < 3)  # 6 rows: full after three pushes of 2
        queue.push(0, batch)
        queue.push(1, -batch)
        queue.step_done()
    # after 4 pushes: rows of pushes 4, 3, 2 (the first fell off)
    expected = torch.cat([batches[3], batches[2], batches[1]])
    torch.testing.assert_close(queue.own(0), expected)
    torch.testing.assert_close(queue.own(1), -expected)
    assert int(queue.fills) == 4


def test_the_queue_is_a_pair_of_buffers_so_it_moves_and_saves_with_the_model():
    queue = FeatureQueue(queue_length=4, n_crops=2, batch_per_rank=2, dim=3, world=1)
    assert set(queue.state_dict()) == {"rows", "fills"}
    assert queue.rows.shape == (2, 4, 3)


def test_a_batch_of_the_wrong_size_is_refused():
    queue = FeatureQueue(queue_length=4, n_crops=1, batch_per_rank=2, dim=3, world=1)
    with pytest.raises(ValueError, match="a batch of 3 rows, expected 2"):
        queue.push(0, torch.zeros(3, 3))


def test_gather_rows_in_one_process_is_the_batch_itself():
    x = torch.randn(4, 2)
    torch.testing.assert_close(gather_rows(x), x.unsqueeze(0))
