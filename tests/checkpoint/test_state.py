"""Every RNG stream a checkpoint keeps is captured as tensors and restored to draw the same numbers."""

from __future__ import annotations

import random

import numpy as np
import torch

from dinolite.checkpoint.state import capture_rng_state, restore_rng_state


def _draws() -> tuple[float, float, float, list[float]]:
    return random.random(), random.gauss(0, 1), float(np.random.rand()), torch.rand(3).tolist()


def test_restored_rng_streams_repeat_the_same_draws():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state, which must survive too
    state = capture_rng_state()
    assert all(isinstance(value, torch.Tensor) for value in state.values())  # nothing pickled
    expected = _draws()
    _draws()  # move every stream on
    restore_rng_state(state)
    assert _draws() == expected


def test_capture_does_not_advance_any_stream():
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    capture_rng_state()
    after_capture = _draws()
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    assert _draws() == after_capture
