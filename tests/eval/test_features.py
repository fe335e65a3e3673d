import socket

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from dinolite.eval.features import extract_features, order_by_index
from tests.gloo_ranks import run_on_ranks


class IndexedImages(Dataset):
    """Deterministic (image, label, index) samples: a stand-in for build_eval_dataset's items."""

    def __init__(self, n: int):
        gen = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 8, 8, generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 3, i


class OverlappingShards(IterableDataset):
    """Rank r yields indices r, r+1, ... stepping by world_size, plus index 0 on every rank (a duplicate)."""

    def __init__(self, base: IndexedImages, rank: int, world_size: int):
        self.base, self.rank, self.world_size = base, rank, world_size

    def __iter__(self):
        wanted = sorted(set(range(self.rank, len(self.base), self.world_size)) | {0})
        return (self.base[i] for i in wanted)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _extract_on_rank(rank: int, world: int, iterable: bool) -> tuple:
    base = IndexedImages(11)
    dataset = OverlappingShards(base, rank, world) if iterable else base
    return tuple(extract_features(_model(), dataset, batch_size=4, progress=False))


def test_order_by_index_sorts_and_drops_duplicates():
    feats = torch.tensor([[3.0], [1.0], [2.0], [1.5]])
    result = order_by_index(feats, torch.tensor([3, 1, 2, 1]), torch.tensor([3, 1, 2, 1]))
    assert result.indices.tolist() == [1, 2, 3]
    assert result.features.squeeze(1).tolist() == [1.0, 2.0, 3.0]


def test_single_process_extracts_every_sample_in_order():
    dataset = IndexedImages(11)
    result = extract_features(_model(), dataset, batch_size=4, progress=False)
    assert result.indices.tolist() == list(range(11))
    assert result.labels.tolist() == [i % 3 for i in range(11)]
    torch.testing.assert_close(result.features, _model()(dataset.images).detach())


def test_mixed_precision_falls_back_to_fp32_on_cpu():
    dataset = IndexedImages(5)
    plain = extract_features(_model(), dataset, progress=False)
    amp = extract_features(_model(), dataset, progress=False, mixed_precision=True)
    assert torch.equal(plain.features, amp.features)


def test_model_returning_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"must return \(B, F\) features"):
        extract_features(lambda x: x, IndexedImages(2), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("iterable", [False, True], ids=["map-style", "iterable-with-duplicate"])
def test_two_gloo_ranks_equal_single_process(tmp_path, iterable):
    features, labels, indices = run_on_ranks(_extract_on_rank, 2, tmp_path, iterable)[0]
    single = extract_features(_model(), IndexedImages(11), batch_size=4, progress=False)
    assert indices.tolist() == list(range(11))  # each sample exactly once, index 0 not counted twice
    assert torch.equal(labels, single.labels)
    torch.testing.assert_close(features, single.features)
