"""PIRL's loss and memory bank against facebookresearch/vissl's released ``NCELossWithMemory``
(tests/fixtures/released/pirl.safetensors).

The fixture holds what the release's own loss computed (recording script: /work/wt/notes/released_golden/pirl.py;
VISSL's MLP-head PIRL settings: cross-entropy form, loss weights 0.5 / 0.5, normalised embeddings, memory momentum
0.5, the memory moved with the image embedding after the scores) for two iterations on fixed embeddings and fixed
slots (its random sampler replaced by them): the initial memory from seed 0, each iteration's loss and the memory
after it. dinolite's :class:`PIRLLoss` and :class:`MemoryBank` must give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from dinolite.losses import PIRLLoss
from dinolite.train.methods.pirl_bank import MemoryBank

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "released" / "pirl.safetensors"


def read_fixture() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["settings"])


def test_initial_memory_equals_the_releases():
    tensors, s = read_fixture()
    bank = MemoryBank(s["N"], s["D"], s["momentum"], s["K"], seed=s["seed"])
    torch.testing.assert_close(bank.memory, tensors["memory_init"], rtol=0, atol=0)


def test_two_iterations_of_loss_and_memory_equal_the_releases():
    tensors, s = read_fixture()
    bank = MemoryBank(s["N"], s["D"], s["momentum"], s["K"], seed=s["seed"])
    loss_fn = PIRLLoss(s["temperature"], s["loss_weights"][0])
    for it in range(2):
        t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"it{it}.")}
        out = loss_fn(t["patches"], t["images"], bank.memory, t["slots_patches"], t["slots_images"])
        torch.testing.assert_close(out["loss"], t["loss"], rtol=1e-6, atol=1e-6)
        bank.update(F.normalize(t["images"], dim=1), t["y"])
        torch.testing.assert_close(bank.memory, t["memory_after"], rtol=1e-6, atol=1e-7)
