"""PIRL's memory bank (dinolite/train/methods/pirl_bank.py): the release's initial memory and momentum update,
a stable slot per image key (open addressing), a full bank refused by name, and negatives that depend only on
the seed and the iteration. 2 processes = 1 process with the bank inside the objective: tests/train/methods/
test_pirl.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinolite.config import ConfigError
from dinolite.train.methods.pirl_bank import EMPTY, MemoryBank, initial_memory


def test_initial_memory_is_uniform_in_plus_minus_s_then_normalised():
    """The release: rand(N, D) * 2s - s with s = 1 / sqrt(D / 3), rows L2-normalised."""
    dim = 12
    s = 1.0 / math.sqrt(dim / 3)
    raw = torch.rand(50, dim, generator=torch.Generator().manual_seed(3)) * 2 * s - s
    got = initial_memory(50, dim, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, raw / raw.norm(dim=1, keepdim=True))
    assert torch.equal(MemoryBank(50, dim, seed=3).memory, got)
    assert (MemoryBank(50, dim).keys == EMPTY).all()


def test_an_image_keeps_its_slot_and_colliding_keys_probe_to_the_next_free_one():
    bank = MemoryBank(5, 4)
    first = bank.slots(torch.tensor([7, 12, 3]))  # 7 % 5 = 2; 12 % 5 = 2 -> taken, probes to 3; 3 -> taken, 4
    assert first.tolist() == [2, 3, 4]
    assert bank.slots(torch.tensor([12, 7, 5])).tolist() == [3, 2, 0]
    assert bank.keys.tolist() == [5, EMPTY, 7, 12, 3]
    assert bank.slots(torch.tensor([3, 3])).tolist() == [4, 4]  # an identical image (same key) shares its slot


def test_a_full_bank_is_refused_naming_the_key():
    bank = MemoryBank(2, 4)
    bank.slots(torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"pirl\.memory_bank_size.*2"):
        bank.slots(torch.tensor([2]))


def test_negatives_depend_on_the_seed_and_iteration_only_with_the_own_slot_first():
    bank = MemoryBank(100, 4, num_negatives=16, seed=1)
    own = torch.tensor([5, 9, 42])
    a, b = bank.draw(own, iteration=7)
    assert a.shape == (3, 17) and b.shape == (3, 17)
    assert torch.equal(a[:, 0], own) and torch.equal(b[:, 0], own)
    assert not torch.equal(a[:, 1:], b[:, 1:])  # each term draws its own negatives, as the release does
    again = MemoryBank(100, 4, num_negatives=16, seed=1).draw(own, iteration=7)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)
    assert not torch.equal(bank.draw(own, iteration=8)[0], a)
    assert not torch.equal(MemoryBank(100, 4, num_negatives=16, seed=2).draw(own, iteration=7)[0], a)
    assert int(a.min()) >= 0 and int(a.max()) < 100


def test_update_moves_each_memory_halfway_then_normalises():
    bank = MemoryBank(4, 2, momentum=0.5)
    bank.memory.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    bank.update(torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([0, 3]))
    half = 1 / math.sqrt(2)
    want3 = F.normalize(torch.tensor([0.3, 0.5 + 0.4]), dim=0)
    torch.testing.assert_close(
        bank.memory,
        torch.stack([torch.tensor([half, half]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), want3]),
    )


def test_state_is_buffers_saved_with_the_objective():
    bank = MemoryBank(6, 3)
    assert set(bank.state_dict()) == {"memory", "keys"}
    bank.slots(torch.tensor([11]))
    other = MemoryBank(6, 3, seed=9)
    other.load_state_dict(bank.state_dict())
    assert other.slots(torch.tensor([11])).tolist() == bank.slots(torch.tensor([11])).tolist()
    assert torch.equal(other.memory, bank.memory)


@pytest.mark.parametrize("args", [(0, 4), (4, 0)])
def test_bad_sizes_are_refused(args):
    with pytest.raises(ValueError, match="MemoryBank"):
        MemoryBank(*args)
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 4, momentum=1.0)
