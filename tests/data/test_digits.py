import json

import pytest

from dinolite.data.digits import prepare_digits
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.data.loader import expand_source


@pytest.mark.slow
def test_prepare_digits_writes_splits_and_shards_once(tmp_path):
    out = prepare_digits(tmp_path, size=16)
    labels = {}
    for split, expected in (("train", 1500), ("val", 297)):
        pngs = sorted((tmp_path / split).glob("*/*.png"))
        assert len(pngs) == expected
        labels[split] = [int(p.parent.name) for p in pngs]
        index = json.loads((tmp_path / "shards" / f"{split}-index.json").read_text())
        assert index["num_samples"] == expected and index["classes"] == [str(d) for d in range(10)]
        samples = list(build_eval_dataset(out[split], None))
        assert len(samples) == expected and samples[0][0].shape == (3, 16, 16)
        assert sorted(label for _, label, _ in samples) == sorted(labels[split])
        assert len(list(build_eval_dataset([out[f"{split}_folder"]], None))) == expected
    # stratified: every digit keeps its share in val (about 297/1797 of ~180)
    assert all(25 <= labels["val"].count(d) <= 35 for d in range(10))
    stamp = (tmp_path / "digits.json").stat().st_mtime_ns
    assert prepare_digits(tmp_path, size=16) == out  # idempotent: reuses the output
    assert (tmp_path / "digits.json").stat().st_mtime_ns == stamp
    assert len(expand_source(out["train"])) == 3
    with pytest.raises(ValueError, match="16 px"):
        prepare_digits(tmp_path, size=32)


@pytest.mark.slow
def test_digits_segmentation_has_ade_layout_and_consistent_masks(tmp_path):
    import numpy as np
    from PIL import Image

    from dinolite.data.digits import prepare_digits_segmentation

    root = prepare_digits_segmentation(tmp_path / "seg", size=16)
    train = sorted((root / "images" / "training").glob("*.png"))
    val = sorted((root / "images" / "validation").glob("*.png"))
    assert (len(train), len(val)) == (1500, 297)
    for image_path in train[:20]:
        mask = np.asarray(Image.open(root / "annotations" / "training" / image_path.name))
        image = np.asarray(Image.open(image_path).convert("L"))
        assert mask.shape == image.shape == (16, 16)
        ids = set(np.unique(mask).tolist())
        assert 0 in ids and len(ids) == 2  # background + the one digit of the image (id = digit + 1)
        assert (image[mask > 0] > 64).all() and (image[mask == 0] <= 64).all()
    assert prepare_digits_segmentation(tmp_path / "seg", size=16) == root  # idempotent
