from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.eval.segmentation import (
    IGNORE_INDEX,
    LinearSegmentationHead,
    SegmentationDataset,
    evaluate_segmentation,
    list_pairs,
    predict_logits,
    read_mask,
    train_segmentation_head,
    validate_masks,
    window_starts,
)
from dinolite.models import DinoVisionTransformer

PATCH = 4
COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], dtype=np.uint8)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write_split(root: Path, split: str, n: int, size: tuple[int, int], seed: int, shift: int = 0) -> None:
    """Images whose every 4x4 patch is one of three colours; the mask is the colour id of each pixel."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        classes = rng.integers(0, 3, size=(h // PATCH, w // PATCH))
        mask = classes.repeat(PATCH, 0).repeat(PATCH, 1).astype(np.uint8)
        Image.fromarray(COLOURS[mask]).save(root / "images" / split / f"img{i}.png")
        Image.fromarray(mask + shift).save(root / "annotations" / split / f"img{i}.png")


def _backbone() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=32, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2).eval()


def test_window_starts_cover_the_image():
    assert window_starts(32, 32, 16) == [0]
    assert window_starts(48, 32, 12) == [0, 12, 16]
    assert window_starts(64, 32, 16) == [0, 16, 32]


def test_reduce_zero_label_shifts_ade_ids(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1, 2, 255]], dtype=np.uint8)).save(path)
    assert read_mask(path, reduce_zero_label=False).tolist() == [[0, 1, 2, 255]]
    assert read_mask(path, reduce_zero_label=True).tolist() == [[IGNORE_INDEX, 0, 1, IGNORE_INDEX]]


def test_sliding_window_on_uniform_head_matches_resize():
    # A head that ignores the features (zero weights) gives the same logits everywhere, so both
    # inference modes must return exactly the bias at every output pixel.
    backbone, head = _backbone(), LinearSegmentationHead(32, 3).eval()
    torch.nn.init.zeros_(head.classifier.weight)
    head.classifier.bias.data = torch.tensor([1.0, 2.0, 3.0])
    image = torch.randn(1, 3, 40, 56)
    for mode in ("resize", "slide"):
        logits = predict_logits(
            backbone, head, image, n_layers=1, mode=mode, crop_size=32, stride=16, out_size=(40, 56)
        )
        assert logits.shape == (1, 3, 40, 56)
        torch.testing.assert_close(logits, torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand_as(logits))


@pytest.mark.slow
@pytest.mark.parametrize(
    "n_layers,mode,val_size",
    # resize keeps the 4-pixel colour patches on the patch grid only for square images; slide does for any
    [(1, "resize", (32, 32)), (2, "slide", (32, 48))],
)
def test_head_recovers_patch_colour_classes(tmp_path, n_layers, mode, val_size):
    _write_split(tmp_path, "training", 16, (32, 32), seed=0)
    _write_split(tmp_path, "validation", 4, val_size, seed=1)
    train_pairs, val_pairs = list_pairs(tmp_path, "train"), list_pairs(tmp_path, "val")
    validate_masks(train_pairs + val_pairs, num_classes=3, reduce_zero_label=False)
    backbone = _backbone()
    head = LinearSegmentationHead(32 * n_layers, 3)
    torch.manual_seed(0)
    losses = train_segmentation_head(
        backbone,
        head,
        SegmentationDataset(train_pairs, 32, MEAN, STD, False, train=True),
        n_layers=n_layers,
        iterations=60,
        batch_size=8,
        lr=1e-2,
        device=torch.device("cpu"),
    )
    assert losses[-1] < 0.5 * losses[0]
    scores = evaluate_segmentation(
        backbone,
        head,
        SegmentationDataset(val_pairs, 32, MEAN, STD, False, train=False),
        num_classes=3,
        n_layers=n_layers,
        mode=mode,
        crop_size=32,
        stride=16,
        device=torch.device("cpu"),
    )
    assert scores["mIoU"] > 90.0, scores
    assert scores["pixel_acc"] > 95.0
    assert len(scores["per_class_iou"]) == 3


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing folder .*images/training"):
        list_pairs(tmp_path, "train")


def test_image_without_mask_is_named(tmp_path):
    _write_split(tmp_path, "training", 2, (8, 8), seed=0)
    (tmp_path / "annotations" / "training" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) without a mask .*img1.png"):
        list_pairs(tmp_path, "train")


def test_colour_mask_is_refused(tmp_path):
    _write_split(tmp_path, "training", 1, (8, 8), seed=0)
    Image.new("RGB", (8, 8)).save(tmp_path / "annotations" / "training" / "img0.png")
    with pytest.raises(ValueError, match="has mode RGB; expected a single-channel"):
        validate_masks(list_pairs(tmp_path, "train"), num_classes=3, reduce_zero_label=False)


def test_label_outside_class_count_suggests_zero_label_shift(tmp_path):
    _write_split(tmp_path, "training", 2, (8, 8), seed=0, shift=1)  # ids 1..3 as ADE stores them
    pairs = list_pairs(tmp_path, "train")
    with pytest.raises(ValueError, match="outside --num-classes 3 .*--reduce-zero-label"):
        validate_masks(pairs, num_classes=3, reduce_zero_label=False)
    validate_masks(pairs, num_classes=3, reduce_zero_label=True)
