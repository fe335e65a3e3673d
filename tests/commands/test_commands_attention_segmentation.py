"""dinolite-attention-segmentation end to end: a run's checkpoint against its random init, on images with a
known object; its JSON, its figures, and the refusal of a backbone without a CLS token."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.commands import attention_segmentation as command
from dinolite.eval.attention_segmentation import (
    MaskProtocol,
    image_batches,
    measure_attention_jaccard,
    random_init_like,
)
from dinolite.eval.backbone import load_any_backbone
from dinolite.export.spec import spec_from_backbone
from dinolite.export.writers import write_safetensors
from dinolite.models import DinoVisionTransformer
from tests.checkpoint.tiny_run import make_tiny_run


def _objects(root, count: int = 6):
    """Black 16 px images, each with a bright rectangle somewhere (the object)."""
    rng = np.random.default_rng(0)
    (root / "0").mkdir(parents=True)
    for i in range(count):
        image = np.zeros((16, 16), dtype=np.uint8)
        top, left = rng.integers(0, 8, size=2)
        image[top : top + 8, left : left + 6] = 200
        Image.fromarray(image).save(root / "0" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attnseg")
    return make_tiny_run(tmp / "run", iterations=(2,)), _objects(tmp / "data")


def test_a_run_is_measured_against_its_random_init_with_figures(run_and_data, tmp_path, capsys):
    run, data = run_and_data
    out = tmp_path / "out"
    argv = ["--backbone", str(run), "--data", str(data), "--output", str(out), "--grid-images", "3"]
    assert command.main(argv + ["--random-init-seed", "7", "--batch-size", "4"]) == 0
    results = json.loads((out / command.RESULTS_FILE).read_text())
    model = load_any_backbone(run)
    spec = model.spec
    expected = {
        name: measure_attention_jaccard(network, image_batches([str(data)], 16, 4, 500), spec.mean, spec.std)[0]
        for name, network in (("trained", model), ("random_init", random_init_like(model, 7)))
    }
    for name, scores in expected.items():
        assert results[name]["per_head_jaccard"] == pytest.approx(scores.per_head), name
        assert results[name]["best_head"] == scores.best_head and results[name]["num_images"] == 6
        for figure in ("masks", "attention"):
            assert (out / f"{name}_{figure}.png").read_bytes()[:4] == b"\x89PNG"
    assert results["trained"]["per_head_jaccard"] != results["random_init"]["per_head_jaccard"]
    assert results["protocol"] == {**vars(MaskProtocol()), "random_init_seed": 7}
    printed = capsys.readouterr().out
    assert "trained: best head" in printed and "random_init: best head" in printed


def test_options_reach_the_protocol_and_random_init_can_be_skipped(run_and_data, tmp_path):
    run, data = run_and_data
    out = tmp_path / "out"
    argv = ["--backbone", str(run), "--data", str(data), "--output", str(out), "--no-random-init"]
    assert command.main(argv + ["--mass", "0.3", "--ink-threshold", "0.5", "--grid-images", "0"]) == 0
    results = json.loads((out / command.RESULTS_FILE).read_text())
    assert "random_init" not in results and results["protocol"]["mass"] == 0.3
    assert results["protocol"]["ink_threshold"] == 0.5 and not list(out.glob("*.png"))


def test_a_backbone_without_cls_token_is_one_error_line(run_and_data, tmp_path, capsys):
    _, data = run_and_data
    torch.manual_seed(0)
    model = DinoVisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, cls_token=False)
    path = write_safetensors(model.state_dict(), spec_from_backbone(model), tmp_path / "nocls.safetensors")[0]
    code = command.main(["--backbone", str(path), "--data", str(data), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1
    assert f"--backbone {path}: the backbone has no CLS token" in err
    assert not (tmp_path / "o" / command.RESULTS_FILE).exists()


def test_a_missing_data_folder_is_named_before_the_backbone_loads(tmp_path, capsys):
    missing = tmp_path / "nope"
    code = command.main(["--backbone", str(missing), "--data", str(missing), "--output", str(tmp_path / "o")])
    assert code != 0 and f"--data: {missing} does not exist" in capsys.readouterr().err
