"""benchmarks/gram_dense.py: the digit segmentation labels, the linear segmentation measure and the Gram
arm's overrides (hand values and a tiny backbone)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gram_dense.py"
spec = importlib.util.spec_from_file_location("gram_dense_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_digit_masks_label_ink_pixels_with_one_plus_the_class_and_the_rest_background():
    grey = torch.tensor([[[0, 127], [128, 255]], [[200, 10], [0, 0]]], dtype=torch.uint8)
    masks = bench.digit_masks(grey, torch.tensor([3, 0]))
    assert masks.dtype == torch.int64
    assert masks.tolist() == [[[0, 0], [4, 4]], [[1, 0], [0, 0]]]


def test_digit_masks_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="labels"):
        bench.digit_masks(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


class _PixelBackbone(nn.Module):
    """A 'ViT' whose patch token is the patch's mean pixel of the first channel and its negation: a
    linear head can separate bright from dark patches exactly."""

    embed_dim = 2

    def get_intermediate_layers(self, images, n, reshape, norm):
        grey = nn.functional.avg_pool2d(images[:, :1], 2)
        return (torch.cat([grey, -grey], dim=1),)


def test_segmentation_miou_is_perfect_when_patches_carry_the_labels():
    torch.manual_seed(0)
    n, size = 32, 8
    ink = torch.rand(n, 1, size // 2, size // 2) > 0.5
    ink = ink.repeat_interleave(2, -1).repeat_interleave(2, -2)  # patch-constant labels, 2-px patches
    images = ink.float().expand(n, 3, size, size).clone()
    masks = ink[:, 0].long()  # background 0, ink 1
    scores = bench.segmentation_miou(
        _PixelBackbone(), (images, masks), (images, masks), num_classes=2, iterations=150, lr=0.05
    )
    assert scores["mIoU"] > 95.0
    assert scores["pixel_acc"] > 97.0


def test_gram_overrides_shift_demo_grams_phase_to_the_branch():
    assert bench.gram_overrides(300) == [
        "gram.use_loss=true",
        "gram.it_load_ema_teacher=300",
        "gram.loss_weight_schedule.warmup_epochs=10",
        "gram.it_first_update=330",
    ]
    assert bench.gram_overrides(200)[2:] == ["gram.loss_weight_schedule.warmup_epochs=6", "gram.it_first_update=230"]
    with pytest.raises(ValueError):
        bench.gram_overrides(0)


def test_the_overrides_load_on_demo_gram():
    import dinolite.train.methods  # noqa: F401
    from dinolite.config import load_config

    cfg = load_config("demo_gram", ["gram.use_loss=false", "optim.epochs=30", *bench.gram_overrides(200)])
    assert cfg.gram.use_loss and cfg.gram.it_load_ema_teacher == 200
    assert cfg.gram.loss_weight_schedule.warmup_epochs == 6 and cfg.gram.max_updates == 3


def test_plot_writes_the_figure(tmp_path):
    rows = [
        {
            "run": run,
            "iteration": it,
            "knn_top1": 60.0 + it / 100,
            "seg_miou": 20.0,
            "locality": 0.5,
            "ink_contrast": 0.7,
        }
        for run, its in (("base", (100, 200, 300)), ("gram", (300,)))
        for it in its
    ]
    (path,) = bench.plot(rows, tmp_path, branch=200)
    assert path.is_file() and path.stat().st_size > 1000
