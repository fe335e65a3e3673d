"""The visualiser's figures: which panel shows what, titled so a reader can tell the images apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dinolite.eval import visualize_figures
from dinolite.eval.collapse_verdict import collapse_report

LONG_NAME = "a_very_long_file_name_for_an_image.png"


@pytest.fixture
def figures(monkeypatch):
    """The figures the writers would save, kept open for inspection instead."""
    kept = []
    monkeypatch.setattr(visualize_figures, "_save_figure", lambda fig, path: kept.append(fig) or path)
    yield kept
    plt = visualize_figures._pyplot()
    for fig in kept:
        plt.close(fig)


def test_attention_grid_rows_are_images_then_each_head_then_their_mean(figures, tmp_path):
    images = torch.rand(2, 3, 8, 8)
    attention = torch.rand(2, 3, 2, 2)  # 3 heads over a 2 x 2 patch grid
    visualize_figures.save_attention_grid(images, attention, tmp_path / "a.png", names=["a.png", LONG_NAME])
    axes = figures[0].axes
    assert len(axes) == 2 * (3 + 2)
    assert [ax.get_title() for ax in axes[:5]] == ["a.png", "head 0", "head 1", "head 2", "mean"]
    assert axes[5].get_title() == "a_very_l~image.png"  # start and end of a long name
    patch = np.ones((4, 4))  # each patch upsampled to a visible 4 x 4 square
    np.testing.assert_allclose(axes[6].get_images()[1].get_array(), np.kron(attention[1, 0].numpy(), patch))
    mean = np.kron(attention[1].mean(0).numpy(), patch)
    np.testing.assert_allclose(axes[9].get_images()[1].get_array(), mean, rtol=1e-6)


def test_pca_grid_wraps_after_the_column_limit(figures, tmp_path):
    count = visualize_figures.GRID_COLUMNS + 1
    images, rgb = torch.rand(count, 3, 8, 8), torch.rand(count, 2, 2, 3)
    visualize_figures.save_pca_grid(images, rgb, tmp_path / "p.png")
    axes = figures[0].axes
    assert len(axes) == 2 * 2 * visualize_figures.GRID_COLUMNS  # two bands of image + colours
    assert axes[0].get_title() == "image 0"
    assert axes[2 * visualize_figures.GRID_COLUMNS].get_title() == f"image {count - 1}"  # second band


def test_spectrum_plot_title_carries_the_measures_and_the_verdict(figures, tmp_path):
    report = collapse_report(torch.ones(10, 8))
    visualize_figures.save_spectrum_plot(report, tmp_path / "s.png", title="run 1")
    title = figures[0].axes[0].get_title()
    assert title.startswith("run 1\nN=10 D=8") and f"-> {report.verdict}" in title
    assert f"needs N >= {visualize_figures.MIN_VERDICT_SAMPLES}" in title  # 10 samples: no verdict yet


def test_a_figure_is_written_as_a_png_with_no_temp_file_left(tmp_path):
    path = visualize_figures.save_spectrum_plot(collapse_report(torch.randn(50, 8)), tmp_path / "spectrum.png")
    assert path == tmp_path / "spectrum.png" and [p.name for p in tmp_path.iterdir()] == ["spectrum.png"]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


def test_attention_mask_grid_colours_each_patch_against_the_object(figures, tmp_path):
    kept = torch.tensor([[[[True, True], [False, False]]]])  # 1 image, 1 head
    objects = torch.tensor([[[True, False], [True, False]]])
    visualize_figures.save_attention_mask_grid(
        torch.rand(1, 3, 4, 4), objects, kept, torch.tensor([[1 / 3]]), tmp_path / "m.png", title="t"
    )
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["image", "object mask", "head 0: J 33"]
    overlay = axes[2].get_images()[1].get_array()  # (4, 4, 4) RGBA over the image, 2 px per patch
    hit, kept_only, missed = (visualize_figures.MASK_COLOURS[k] for k in ("hit", "kept only", "object only"))
    assert tuple(overlay[0, 0, :3]) == pytest.approx(hit) and tuple(overlay[0, 3, :3]) == pytest.approx(kept_only)
    assert tuple(overlay[3, 0, :3]) == pytest.approx(missed) and overlay[3, 3, 3] == 0  # neither: transparent
