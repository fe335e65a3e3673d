"""Attention maps, PCA images, collapse report and the eval/visualize.py CLI on a tiny ViT."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.eval import visualize as vis
from dinolite.eval import visualize_figures
from dinolite.models.vision_transformer import DinoVisionTransformer

REPO = Path(__file__).resolve().parents[2]


def _tiny_vit(registers: int = 0, cls_token: bool = True) -> DinoVisionTransformer:
    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        num_register_tokens=registers,
        init_values=1.0,
        cls_token=cls_token,
    )
    return model.eval()


def test_list_images_names_the_source_without_images(tmp_path):
    (tmp_path / "a.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=f"--images {tmp_path}: no image files"):
        vis.list_images([str(tmp_path)])


def _write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = (rng.random((40, 52, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")


def _load_cli():
    spec = importlib.util.spec_from_file_location("visualize_cli", REPO / "eval" / "visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_attention_pca_spectrum_and_report(tmp_path, capsys):
    from dinolite.export.spec import spec_from_backbone
    from dinolite.export.writers import write_safetensors

    model = _tiny_vit()
    weights = tmp_path / "tiny.safetensors"
    write_safetensors(model.state_dict(), spec_from_backbone(model, train_img_size=32), weights)
    _write_images(tmp_path / "images", 6)
    out = tmp_path / "vis"
    cli = _load_cli()
    code = cli.main(
        [
            "--backbone",
            str(weights),
            "--images",
            str(tmp_path / "images"),
            "--output",
            str(out),
            "--max-grid-images",
            "3",
            "--foreground-threshold",
            "0.5",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    for name in ("attention.png", "pca.png", "spectrum.png"):
        with Image.open(out / name) as png:
            assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 100
    report = json.loads((out / "collapse_report.json").read_text())
    assert report["num_samples"] == 6 and report["dim"] == 32
    assert report["verdict"] == "no verdict" and "num_samples < 40" in report["rules"]["no verdict"]
    assert report["std_ratio"] == pytest.approx(report["std"] * math.sqrt(32))
    printed = capsys.readouterr().out
    assert "figures show 3 of 6 images" in printed and "no collapse verdict: 6 samples < 40" in printed
    assert not list(out.glob(".*tmp*"))


def test_a_cls_free_backbone_gets_every_figure_but_the_cls_attention(tmp_path, capsys):
    """cls_token=false (the released I-JEPA encoder's layout): no CLS row to map, so no attention.png; the PCA
    image, the spectrum (of the pooled feature, the mean patch token) and the report are written."""
    from dinolite.export.spec import spec_from_backbone
    from dinolite.export.writers import write_safetensors

    model = _tiny_vit(cls_token=False)
    weights = tmp_path / "tiny.safetensors"
    write_safetensors(model.state_dict(), spec_from_backbone(model, train_img_size=32), weights)
    _write_images(tmp_path / "images", 4)
    out = tmp_path / "vis"
    argv = ["--backbone", str(weights), "--images", str(tmp_path / "images"), "--output", str(out), "--device", "cpu"]
    assert _load_cli().main(argv) == 0
    assert not (out / "attention.png").exists()
    assert all((out / name).is_file() for name in ("pca.png", "spectrum.png", "collapse_report.json"))
    assert "no attention.png: the backbone has no CLS token" in capsys.readouterr().out


def test_grid_images_come_from_every_source_in_turn():
    groups = [[f"a{i}" for i in range(10)], ["b0", "b1"], ["c0"]]
    assert vis.pick_grid_images(groups, 6) == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert len(vis.pick_grid_images(groups, 0)) == 13 and len(vis.pick_grid_images(groups, None)) == 13


def test_cli_takes_every_folder_and_titles_do_not_overlap(tmp_path, capsys, monkeypatch):
    from dinolite.export.spec import spec_from_backbone
    from dinolite.export.writers import write_safetensors

    model = _tiny_vit()
    weights = tmp_path / "tiny.safetensors"
    write_safetensors(model.state_dict(), spec_from_backbone(model, train_img_size=32), weights)
    _write_images(tmp_path / "a", 12)
    _write_images(tmp_path / "b", 3)
    saved = {}
    monkeypatch.setattr(visualize_figures, "_save_figure", lambda fig, path: saved.setdefault(path.name, fig) and path)
    argv = [
        "--backbone",
        str(weights),
        "--images",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--output",
        str(tmp_path / "vis"),
        "--max-grid-images",
        "0",
        "--device",
        "cpu",
    ]
    assert _load_cli().main(argv) == 0
    assert "figures show 15 of 15 images from 2 source(s)" in capsys.readouterr().out
    fig = saved["attention.png"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert sum(t.get_text().startswith("img_") for t in titles) == 15  # one title per image row, both folders
    boxes = [t.get_window_extent(renderer) for t in titles]
    overlaps = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    assert not overlaps
    assert len(saved["pca.png"].axes) == 2 * 2 * 8  # 15 images wrap into two bands of 8 columns
