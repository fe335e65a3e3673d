"""The GPU table (dinolite/plan/hardware.py)."""

from __future__ import annotations

import pytest

from dinolite.plan.hardware import GPUS, get_gpu


def test_every_gpu_has_its_peaks_links_and_source():
    for gpu in GPUS.values():
        assert set(gpu.peak_tflops) >= {"bf16", "fp16", "tf32", "fp32"}
        assert gpu.peak_tflops["bf16"] > gpu.peak_tflops["tf32"] > gpu.peak_tflops["fp32"]
        assert gpu.nvlink_gbs > gpu.network_gbs > 0 and gpu.memory_gib > 0
        assert "datasheet" in gpu.source


def test_names_are_case_insensitive_and_an_unknown_one_lists_the_known():
    assert get_gpu("A100-80GB").memory_gib == 80.0
    with pytest.raises(ValueError, match="a100-40gb, a100-80gb, h100, h200"):
        get_gpu("v100")
