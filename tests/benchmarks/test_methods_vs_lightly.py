"""benchmarks/methods_vs_lightly.py on its --quick setting: both sides of two methods train and are
evaluated on the digits, the JSON and the RESULTS.md table hold every figure; lightly's masked-ViT call
on dinolite's ViT keeps the tokens lightly's index names. Skipped without lightly (an optional benchmark
dependency, never the package's)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dinolite.config import available_presets

pytest.importorskip(
    "lightly", reason="lightly is not installed: pip install --no-deps lightly==1.6.0 lightning-utilities"
)
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_methods_vs_lightly", ROOT / "benchmarks" / "methods_vs_lightly.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_run_trains_and_evaluates_both_sides(bench, tmp_path, restore_threads):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nearlier text\n")
    out = tmp_path / "results.json"
    argv = ["--quick", "--datasets", "digits", "--methods", "simclr", "byol", "vicreg", "--output-dir", str(tmp_path)]
    assert bench.main([*argv, "--output", str(out), "--write-results", str(results_md)]) == 0
    results = json.loads(out.read_text())
    digits = results["datasets"]["digits"]
    vicreg_shipped = "demo_vicreg" in available_presets()  # another engineer is adding it
    assert set(digits["methods"]) == {"simclr", "byol"} | ({"vicreg"} if vicreg_shipped else set())
    assert results["skipped"] == ([] if vicreg_shipped else ["vicreg: preset 'demo_vicreg' is not shipped yet"])
    for sides in digits["methods"].values():
        assert set(sides) == {"dinolite", "lightly"}
        for side in sides.values():
            assert 0 < side["knn"] <= 100 and 0 < side["linear"] <= 100 and side["train_seconds"] > 0
    assert digits["raw_pixels"]["knn"] > 80  # 297 val digits against 1500, on pixels
    assert results["budget"] == {"iterations": 3, "batch_size": 16, "linear_epochs": 2}
    # both sides start from the network the random-init row evaluates: 3 steps barely move an EMA target
    byol = digits["methods"]["byol"]
    assert abs(byol["dinolite"]["knn"] - byol["lightly"]["knn"]) < 15

    text = results_md.read_text()
    assert text.startswith("# Results\n\nearlier text\n") and text.count(bench.BEGIN) == 1
    simclr = digits["methods"]["simclr"]
    assert f"| SimCLR | {simclr['dinolite']['knn']:.1f} | {simclr['lightly']['knn']:.1f} |" in text
    # a second run replaces the marked table instead of appending another
    bench.write_results(results_md, "| new |", "header")
    assert results_md.read_text().count(bench.BEGIN) == 1 and "| new |" in results_md.read_text()

    # --report-only writes the same table from the JSON alone
    again = tmp_path / "again.md"
    assert bench.main(["--report-only", "--output", str(out), "--write-results", str(again)]) == 0
    assert bench.markdown(results) in again.read_text() and "--quick" in again.read_text()

    # --resume keeps every finished entry: nothing is trained again
    stamp = out.stat().st_mtime_ns
    assert bench.main([*argv, "--output", str(out), "--resume"]) == 0
    assert json.loads(out.read_text())["datasets"] == results["datasets"] and out.stat().st_mtime_ns >= stamp


def test_lightly_token_index_keeps_those_patches(bench):
    from benchmarks.lightly_recipes import CLSBackbone
    from dinolite.config import load_config
    from dinolite.models import build_backbone

    torch.manual_seed(0)
    vit = build_backbone(load_config("demo").student, img_size=32).eval()
    backbone = CLSBackbone(vit)
    images = torch.randn(2, 3, 32, 32)
    everything = torch.arange(65).expand(2, -1)  # the class token (0) and all 64 patches
    assert torch.allclose(backbone(images, idx_keep=everything), vit(images), atol=1e-6)
    kept = torch.tensor([[0, 1, 5], [0, 64, 2]])  # tokens 1, 5 -> patches 0, 4
    expected = vit.forward_features(images, keep_indices=torch.tensor([[0, 4], [63, 1]]))["x_norm_clstoken"]
    assert torch.equal(backbone(images, idx_keep=kept), expected)
    assert not torch.allclose(backbone(images, idx_keep=kept), vit(images), atol=1e-3)


def test_every_method_row_has_a_lightly_recipe_and_a_label(bench):
    from benchmarks.lightly_recipes import RECIPES

    assert set(bench.METHODS) == set(RECIPES)
    assert {"simclr", "barlow_twins", "byol", "simsiam", "msn", "dino", "vicreg"} <= set(bench.METHODS)
    with pytest.raises(SystemExit, match="unknown method"):
        bench.selected_methods(["simclr", "mocov9"])


def test_presets_small_runs_every_row_from_the_generic_presets(bench):
    assert bench.build_parser().parse_args([]).presets == "demo"
    assert bench.build_parser().parse_args(["--presets", "small"]).presets == "small"
    names, notes = bench.selected_methods(None, "small")
    assert set(names) == set(bench.METHODS) and notes == []
