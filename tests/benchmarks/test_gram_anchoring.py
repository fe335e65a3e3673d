"""benchmarks/gram_anchoring.py's dense measures on hand-made patch features."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gram_anchoring.py"
spec = importlib.util.spec_from_file_location("gram_anchoring_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_neighbour_mask_of_a_2x2_grid():
    assert bench.neighbour_mask(2).int().tolist() == [[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]]


def test_locality_and_ink_contrast_hand_values():
    # a 2 x 2 grid: the top row's patches are one direction, the bottom row's an orthogonal one
    a, b = [1.0, 0.0], [0.0, 1.0]
    patches = torch.tensor([[a, a, b, b]])
    images = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]).expand(1, 3, 2, 2)  # ink on the top row (patch 1 px)
    m = bench.locality(patches, images, patch_size=1)
    # 8 ordered neighbour pairs: 4 in a row (similarity 1), 4 across rows (0); 12 pairs in all, 4 of them 1
    assert m["near"] == pytest.approx(0.5)
    assert m["all"] == pytest.approx(1 / 3)
    assert m["locality"] == pytest.approx(1 / 6)
    assert m["ink_contrast"] == pytest.approx(1.0)  # ink-ink 1, ink-background 0
