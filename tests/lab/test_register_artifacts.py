"""Register artifacts: high-norm patch tokens counted against the median, the per-network measurement, and the
report section with its table and figures, on constructed norms and tiny ViTs (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dinolite.lab import register_artifacts as ra
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.report import write_report
from tests.eval.test_visualize import _tiny_vit

MATRIX = """\
name: regs
description: constructed register runs
output_dir: {out}
iterations: 100
measurements: {{every: 10, spectra: 2, register_artifacts: true}}
runs:
  - {{label: plain, preset: demo, expect: healthy}}
  - {{label: regs, preset: demo, overrides: [student.num_register_tokens=2], expect: healthy}}
"""


def test_norm_outliers_counts_the_tokens_above_factor_times_the_median():
    norms = torch.ones(4, 5, 5)  # 100 tokens of norm 1 ...
    norms[0, 2, 3] = 10.0  # ... one of norm 10 (above 3 x median) ...
    norms[1, 0, 0] = 2.9  # ... and one just under the cut
    out = ra.norm_outliers(norms)
    assert out.median == 1.0
    assert out.threshold == 3.0
    assert (out.count, out.total) == (1, 100)
    assert out.share == pytest.approx(0.01)
    assert out.max == 10.0
    assert out.p99 == pytest.approx(2.9 + 0.01 * (10.0 - 2.9))  # linear interpolation between ranks 99 and 100
    assert ra.norm_outliers(norms, factor=2.0).count == 2


def test_norm_outliers_rejects_an_empty_set_and_a_factor_not_above_one():
    with pytest.raises(ValueError, match="at least one"):
        ra.norm_outliers(torch.ones(0))
    with pytest.raises(ValueError, match="above 1"):
        ra.norm_outliers(torch.ones(3), factor=1.0)


def test_measure_tokens_gives_norms_shares_and_attention_of_the_first_images():
    images = torch.randn(6, 3, 32, 32)
    m = ra.measure_tokens(_tiny_vit(2), images, "net", batch_size=4)  # two batches
    assert m.registers == 2
    assert m.norms.shape == (6, 4, 4)
    assert m.outliers.total == 96
    assert m.shares.shape == (4, 3)
    torch.testing.assert_close(m.shares.sum(dim=-1), torch.ones(4))
    assert m.attention.shape == (ra.ATTENTION_IMAGES, 4, 4, 4)
    torch.testing.assert_close(m.attention.sum(dim=(-2, -1)), torch.ones(ra.ATTENTION_IMAGES, 4))
    last = ra.cls_attention_maps(_tiny_vit(2), images[5:6])[0]  # images 0, 2, 3, 5 are shown
    torch.testing.assert_close(m.attention[-1], last)


def test_the_attention_figure_shows_evenly_spaced_images_from_first_to_last():
    assert ra.shown_indices(297).tolist() == [0, 99, 197, 296]
    assert ra.shown_indices(2).tolist() == [0, 1]


def _measured(registers: int, high: int) -> ra.TokenMeasurement:
    norms = torch.ones(10, 2, 5)
    norms.view(-1)[:high] = 5.0  # `high` of 100 tokens above 3 x median
    return ra.TokenMeasurement(
        "run", registers, norms, ra.norm_outliers(norms), torch.zeros(1, 3), torch.zeros(1, 1, 2, 5)
    )


@pytest.mark.parametrize(
    ("without", "with_registers", "verdict"),
    [(4, 0, "**reproduced**"), (4, 2, "**not reproduced**"), (0, 0, "**not reproduced**")],
)
def test_the_finding_needs_outliers_without_registers_and_a_tenth_of_them_at_most_with(
    without, with_registers, verdict
):
    text = ra.finding_text([_measured(0, without), _measured(4, with_registers)])
    assert verdict in text
    assert f"without registers {without:.2f}%" in text and f"with registers {with_registers:.2f}%" in text


def test_the_finding_is_not_judged_without_both_kinds_of_run():
    assert "needs a trained run with and one without" in ra.finding_text([_measured(0, 3)])


def _plan_with_checkpoints(tmp_path: Path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(out=tmp_path / "lab"))
    plan = plan_matrix(path, prepare=False)
    for run in plan.runs:
        (run.run_dir / "checkpoints" / "iter_00000100").mkdir(parents=True)
    return plan


def _load_tiny(path: Path):
    return _tiny_vit(2 if "regs" in str(path) else 0)


def test_the_report_section_has_a_row_per_network_and_both_figures(tmp_path):
    plan = _plan_with_checkpoints(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    section = ra.register_artifacts_section(plan, [], out, load=_load_tiny, images=torch.randn(5, 3, 32, 32))
    assert [f for f, _ in section.figures] == ["token_norms.png", "attention_maps.png"]
    assert all((out / f).stat().st_size > 0 for f, _ in section.figures)
    rows = [line for line in section.text.splitlines() if line.startswith("| ")][1:]
    labels = [row.split(" | ")[0] for row in rows]
    assert labels == ["| plain (it 100)", "| regs (it 100)", "| plain (random init)", "| regs (random init)"]
    assert [row.split(" | ")[1] for row in rows] == ["0", "2", "0", "2"]
    assert all(" of 80) |" in row for row in rows[:2])  # 5 images x 16 patches of the tiny ViT
    assert all(" of 320) |" in row for row in rows[2:])  # the demo ViT at random init: 5 x 64 patches


def test_a_plan_without_checkpoints_gets_the_random_init_rows_and_no_figures(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(out=tmp_path / "lab"))
    plan = plan_matrix(path, prepare=False)
    section = ra.register_artifacts_section(plan, [], tmp_path, images=torch.randn(2, 3, 32, 32))
    assert section.figures == ()
    assert "No run has a checkpoint yet." in section.text
    assert "plain (random init)" in section.text
    plan.matrix.measurements.register_artifacts = False
    assert ra.register_artifacts_section(plan, [], tmp_path, images=torch.randn(2, 3, 32, 32)) is None


def test_the_lab_report_carries_the_section_only_when_the_matrix_asks(tmp_path, monkeypatch):
    plan = _plan_with_checkpoints(tmp_path)
    monkeypatch.setattr(ra, "evaluation_images", lambda cfg, source: torch.randn(4, 3, 32, 32))
    monkeypatch.setattr(ra, "load_any_backbone", _load_tiny)
    page = write_report(plan).read_text()
    assert "## Register artifacts (Darcet et al. 2024)" in page
    assert "![Patch-token norms" in page and "(attention_maps.png)" in page
    plan.matrix.measurements.register_artifacts = False
    page = write_report(plan).read_text()
    assert "Register artifacts" not in page
