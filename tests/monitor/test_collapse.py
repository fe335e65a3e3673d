"""CollapseMonitor on constructed diagnostics, spectrum files, and gathering across two gloo ranks."""

import json
import math

import numpy as np
import pytest
import torch

from dinolite.monitor import metrics
from dinolite.monitor.collapse import METRIC_NAMES, CollapseMonitor, gather_rows
from tests.gloo_ranks import run_on_ranks


def _diagnostics(n: int = 256, d: int = 32, k: int = 64, seed: int = 0, collapsed: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    if collapsed:
        cls = torch.randn(1, d, generator=g).repeat(n, 1)
        logits = torch.randn(1, k, generator=g).repeat(n, 1)
        probs = torch.zeros(n, k)
        probs[:, 3] = 1.0
    else:
        cls = torch.randn(n, d, generator=g)
        logits = torch.randn(n, k, generator=g)
        probs = torch.softmax(logits / 0.04, dim=1)
    # two views of each image (DINOv2's global crops): the teacher CLS and a perturbed copy
    views = torch.stack([cls, cls + 0.3 * torch.randn(n, d, generator=g) * (not collapsed)], dim=1)
    return {
        "teacher_cls": cls,
        "teacher_cls_views": views,
        "student_cls": cls + 0.01 * torch.randn(n, d, generator=g),
        "teacher_head_logits": logits,
        "teacher_head_probs": probs,
        "student_head_logits": logits * 0.5,
    }


def test_measure_reports_every_metric_with_the_metric_functions_values():
    monitor = CollapseMonitor(every=10, max_samples=1000, student_temp=0.1)
    diag = _diagnostics()
    out = monitor.measure(10, diag)
    # LiDAR only where the views of the embedding are given (here the teacher CLS's)
    assert set(out) == set(METRIC_NAMES) - {"collapse/student_backbone_lidar", "collapse/head_lidar"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["collapse/num_samples"] == 256
    assert out["collapse/backbone_std"] == pytest.approx(metrics.embedding_std(diag["teacher_cls"]))
    assert out["collapse/backbone_std_ratio"] == pytest.approx(out["collapse/backbone_std"] * math.sqrt(32))
    assert out["collapse/backbone_rankme"] == pytest.approx(metrics.rankme(diag["teacher_cls"]))
    assert out["collapse/backbone_rankme_ratio"] == pytest.approx(out["collapse/backbone_rankme"] / 32)
    assert out["collapse/head_rankme"] == pytest.approx(metrics.rankme(diag["teacher_head_logits"]))
    assert out["collapse/backbone_alpha_req"] == pytest.approx(metrics.alpha_req(diag["teacher_cls"]))
    assert out["collapse/head_alpha_req"] == pytest.approx(metrics.alpha_req(diag["teacher_head_logits"]))
    assert out["collapse/backbone_lidar"] == pytest.approx(metrics.lidar(diag["teacher_cls_views"]))
    assert out["collapse/teacher_entropy_norm"] == pytest.approx(
        metrics.entropy(diag["teacher_head_probs"]) / math.log(64)
    )
    used = metrics.prototypes_used(diag["teacher_head_probs"])
    assert out["collapse/teacher_prototypes_used"] == used > 30  # random logits: most of the 64 are used
    assert out["collapse/teacher_prototypes_used_ratio"] == pytest.approx(used / 64)
    ce, kl = metrics.cross_entropy_kl(diag["student_head_logits"], diag["teacher_head_probs"], 0.1)
    assert out["collapse/student_teacher_ce"] == pytest.approx(ce)
    assert out["collapse/student_teacher_kl"] == pytest.approx(kl)
    assert set(monitor.last_spectra) == {
        "collapse/backbone_log10_spectrum",
        "collapse/student_backbone_log10_spectrum",
        "collapse/head_log10_spectrum",
    }
    assert monitor.last_spectra["collapse/backbone_log10_spectrum"].shape == (32,)


def test_healthy_and_collapsed_diagnostics_are_told_apart():
    monitor = CollapseMonitor(every=1, max_samples=4096)
    healthy = monitor.measure(0, _diagnostics())
    collapsed = monitor.measure(1, _diagnostics(collapsed=True))
    assert healthy["collapse/backbone_std_ratio"] > 0.9
    assert collapsed["collapse/backbone_std_ratio"] < 1e-6
    assert healthy["collapse/backbone_rankme"] > 25
    assert collapsed["collapse/backbone_rankme"] == pytest.approx(1.0, abs=1e-3)
    # views far apart relative to their own spread: LiDAR near the width; one image repeated: 0
    assert healthy["collapse/backbone_lidar"] > 25 and collapsed["collapse/backbone_lidar"] == 0.0
    # a covariance of one direction has no power law to fit: alpha-ReQ is not logged
    assert "collapse/backbone_alpha_req" in healthy and "collapse/backbone_alpha_req" not in collapsed
    assert collapsed["collapse/teacher_mean_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert collapsed["collapse/teacher_prototypes_used"] == 1.0 < healthy["collapse/teacher_prototypes_used"]
    assert healthy["collapse/teacher_mean_entropy_norm"] > 0.9


def test_max_samples_bounds_the_rows_used():
    monitor = CollapseMonitor(every=1, max_samples=100)
    out = monitor.measure(0, _diagnostics(n=256))
    assert out["collapse/num_samples"] == 100
    assert out["collapse/backbone_rankme"] == pytest.approx(metrics.rankme(_diagnostics(n=256)["teacher_cls"][:100]))


def test_partial_diagnostics_give_partial_metrics_and_none_is_an_error():
    monitor = CollapseMonitor(every=1, max_samples=100)
    out = monitor.measure(0, {"teacher_cls": torch.randn(20, 8)})
    assert "collapse/backbone_rankme" in out and "collapse/teacher_entropy" not in out
    with pytest.raises(ValueError, match="none of the keys.*teacher_cls.*got loss"):
        monitor.measure(0, {"loss": torch.zeros(3)})


def test_lidar_reads_the_views_of_the_first_max_samples_images_and_needs_two():
    monitor = CollapseMonitor(every=1, max_samples=30)
    views = torch.randn(50, 3, 8, generator=torch.Generator().manual_seed(2))
    out = monitor.measure(0, {"teacher_cls": views[:, 0], "teacher_cls_views": views})
    assert out["collapse/backbone_lidar"] == pytest.approx(metrics.lidar(views[:30]))
    one_image = monitor.measure(0, {"teacher_cls": views[:1, 0], "teacher_cls_views": views[:1]})
    assert "collapse/backbone_lidar" not in one_image  # one surrogate class separates nothing
    with pytest.raises(ValueError, match="'teacher_cls_views' must be \\(images, views >= 2, dims\\)"):
        monitor.measure(0, {"teacher_cls_views": views[:, :1]})


def test_mean_sources_report_the_mean_of_a_per_image_scalar():
    """I-JEPA's per-image prediction error: ``collapse/<name>`` is its mean over the measured images."""
    monitor = CollapseMonitor(every=1, max_samples=3, mean_sources={"errors": "target_prediction_error"})
    out = monitor.measure(0, {"teacher_cls": torch.randn(4, 8), "errors": torch.tensor([0.1, 0.2, 0.6, 9.0])})
    assert out["collapse/target_prediction_error"] == pytest.approx(0.3)  # the first max_samples rows
    assert "collapse/target_prediction_error" in monitor.metric_names
    assert "collapse/target_prediction_error" not in METRIC_NAMES  # DINOv2's monitor has no such metric
    alone = monitor.measure(0, {"errors": torch.tensor([0.5, 0.7])})  # a mean source alone is enough
    assert alone["collapse/target_prediction_error"] == pytest.approx(0.6) and alone["collapse/num_samples"] == 2


def test_spectrum_saved_once_per_window(tmp_path):
    monitor = CollapseMonitor(every=10, max_samples=500, spectrum_every=50, output_dir=tmp_path)
    diag = _diagnostics()
    for iteration in range(0, 130, 10):
        monitor.measure(iteration, diag)
    files = sorted(p.name for p in (tmp_path / "spectrum").iterdir())
    assert files == ["spectrum_00000000.json", "spectrum_00000050.json", "spectrum_00000100.json"]
    payload = json.loads((tmp_path / "spectrum" / "spectrum_00000050.json").read_text())
    assert payload["iteration"] == 50 and payload["num_samples"] == 256
    expected = metrics.covariance_spectrum(diag["teacher_cls"]).numpy()
    np.testing.assert_allclose(payload["spectra"]["backbone"], expected, rtol=1e-6)
    assert not list((tmp_path / "spectrum").glob(".*tmp*"))  # atomic writes leave no temp files


def test_due_and_bad_arguments():
    assert CollapseMonitor(every=20, max_samples=10).due(40)
    assert not CollapseMonitor(every=20, max_samples=10).due(41)
    assert not CollapseMonitor(every=0, max_samples=10).due(0)
    with pytest.raises(ValueError, match="monitor.max_samples"):
        CollapseMonitor(every=1, max_samples=1)


def _gather_on_rank(rank: int, world: int) -> dict:
    full = _diagnostics(n=40, seed=5)
    # Uneven split (the last batch of an epoch can differ): rank 0 holds 24 rows, rank 1 holds 16.
    rows = slice(0, 24) if rank == 0 else slice(24, 40)
    local = {key: value[rows] for key, value in full.items()}
    out = CollapseMonitor(every=1, max_samples=1000).measure(0, local)
    bounded = gather_rows(torch.arange(40.0)[rows].unsqueeze(1), max_rows=10)
    return {"metrics": out, "bounded": bounded}


@pytest.mark.numerics
def test_two_rank_gather_matches_single_process(tmp_path):
    result = run_on_ranks(_gather_on_rank, 2, tmp_path)[0]
    single = CollapseMonitor(every=1, max_samples=1000).measure(0, _diagnostics(n=40, seed=5))
    assert result["metrics"].keys() == single.keys()
    for name, value in single.items():
        assert result["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    # max_rows=10 over 2 ranks: 5 rows from each, in rank order.
    assert result["bounded"].squeeze(1).tolist() == [0, 1, 2, 3, 4, 24, 25, 26, 27, 28]


def test_the_top_eigenvalues_of_the_raw_covariance_are_logged_when_asked():
    """Stepwise learning's trace (Simon et al. 2023): eigenvalues of the raw embedding covariance, by hand."""
    # rows (+-a, 0), (0, +-b): mean 0, covariance diag(a^2 / 2, b^2 / 2) = diag(2.0, 0.5) for a = 2, b = 1
    z = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * 1e-3  # small: not normalised away
    monitor = CollapseMonitor(every=1, max_samples=64, eigenvalues=3, embedding_sources={"projector": "projector"})
    out = monitor.measure(0, {"projector": z})
    assert out["collapse/projector_eig_1"] == pytest.approx(2.0e-6)
    assert out["collapse/projector_eig_2"] == pytest.approx(0.5e-6)
    assert "collapse/projector_eig_3" not in out  # min(N, D) = 2 eigenvalues
    silent = CollapseMonitor(every=1, max_samples=64, embedding_sources={"projector": "projector"})
    assert not any("_eig_" in key for key in silent.measure(0, {"projector": z}))
    with pytest.raises(ValueError, match="monitor.eigenvalues must be >= 0"):
        CollapseMonitor(every=1, max_samples=64, eigenvalues=-1)
