"""The report from run folders written by hand (no training): table, verdicts against expectations,
the reference comparison, the replayed watchdog, and the figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dinolite.config import save_config
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.report import spearman, write_report
from dinolite.lab.run_reports import collect

MATRIX = """\
name: handmade
description: constructed runs
output_dir: {out}
iterations: 100
measurements: {{every: 10, spectra: 2}}
runs:
  - {{label: base, preset: demo, expect: healthy}}
  - {{label: one-prototype, preset: demo, overrides: [teacher.center_momentum=1.0], expect: complete collapse}}
  - {{label: few-dims, preset: demo, overrides: [dino.koleo_loss_weight=0.0], expect: dimensional collapse,
      reference: base}}
  - {{label: expected-collapse-but-healthy, preset: demo, overrides: [teacher.teacher_temp=0.1],
      expect: complete collapse}}
  - {{label: never-ran, preset: demo, overrides: [teacher.momentum_teacher=0.5], expect: healthy}}
  - {{label: weak-target, preset: demo, overrides: [dino.koleo_loss_weight=0.05], expect: better than reference,
      reference: base, features: avgpool}}
  - {{label: weak-source, preset: demo, overrides: [dino.koleo_loss_weight=0.2], expect: worse than reference,
      reference: base}}
"""
ITERS = range(10, 110, 10)


def write_run(
    run_dir: Path, config, mean_entropy: float, eval_ranks: list[float], knn: float = 61.0, extra: dict | None = None
) -> None:
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    with open(run_dir / "metrics.jsonl", "w") as f:
        for it in ITERS:
            f.write(
                json.dumps(
                    {
                        "iteration": it,
                        "loss": 3.0,
                        "collapse/num_samples": 64,
                        "collapse/backbone_std": 0.07,
                        "collapse/backbone_std_ratio": 0.7,
                        "collapse/backbone_rankme": 12.0,
                        "collapse/backbone_rankme_ratio": 0.19,
                        "collapse/teacher_entropy_norm": 0.5,
                        "collapse/teacher_entropy": 1.7,
                        "collapse/teacher_mean_entropy_norm": mean_entropy / 3.47,
                        "collapse/teacher_mean_entropy": mean_entropy,
                        **(extra or {}),
                    }
                )
                + "\n"
            )
    spectra = [
        {
            "iteration": it,
            "num_samples": 1024,
            "eigenvalues": [1.0 / (i + 1) ** 2 for i in range(96)],
            "rankme": rank,
            "rankme_ratio": rank / 96,
            "std_ratio": 0.7,
        }
        for it, rank in zip((50, 100), eval_ranks)
    ]
    (run_dir / "lab_result.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "iteration": 100,
                "knn": {"top1": knn},
                "linear": {"top1": 64.5},
                "spectra": spectra,
                "train_seconds": 60.0,
                "eval_seconds": 6.0,
            }
        )
    )


def handmade_plan(tmp_path: Path):
    """The MATRIX planned under ``tmp_path`` and its runs by label (nothing written yet)."""
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(out=tmp_path / "lab"))
    plan = plan_matrix(path, prepare=False)
    return plan, {r.label: r for r in plan.runs}


def test_report_marks_each_expected_finding_with_its_numbers(tmp_path):
    plan, runs = handmade_plan(tmp_path)
    write_run(runs["base"].run_dir, runs["base"].config, 3.0, [12.0, 14.0])
    write_run(runs["one-prototype"].run_dir, runs["one-prototype"].config, 1e-6, [12.0, 13.0])
    write_run(runs["few-dims"].run_dir, runs["few-dims"].config, 3.0, [5.0, 4.0])  # 0.42, 0.29 of base
    write_run(
        runs["expected-collapse-but-healthy"].run_dir, runs["expected-collapse-but-healthy"].config, 3.0, [12.0, 14.0]
    )
    write_run(runs["weak-target"].run_dir, runs["weak-target"].config, 3.0, [12.0, 14.0], knn=64.0)  # +3 > margin
    write_run(runs["weak-source"].run_dir, runs["weak-source"].config, 3.0, [12.0, 14.0], knn=60.0)  # -1: on par

    reports = {r.run.label: r for r in collect(plan)}
    assert reports["one-prototype"].watchdog.fired_at == 40  # demo rule: H(mean) < 0.3 from it. 20 (20, 30, 40)
    assert reports["base"].watchdog.fired_at is None

    page = write_report(plan).read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:-1]]
        for line in page.splitlines()
        if line.startswith("| `")
    }
    assert rows["base"][:5] == ["healthy", "healthy", "-", "no", "61.0"]
    assert rows["base"][7] == "**yes**"
    assert rows["one-prototype"][:4] == ["complete collapse", "complete collapse (one prototype)", "10", "40"]
    assert rows["one-prototype"][7] == "**yes**"
    assert "H(mean teacher)/ln K < 0.1" in rows["one-prototype"][8]
    assert rows["few-dims"][:3] == ["dimensional collapse", "dimensional collapse (fewer dimensions than base)", "50"]
    assert rows["few-dims"][7] == "**yes**"
    assert rows["expected-collapse-but-healthy"][1] == "healthy" and rows["expected-collapse-but-healthy"][7] == "no"
    assert rows["never-ran"][1] == "no data [run not run]" and rows["never-ran"][7] == "no"
    assert rows["weak-target"][1] == "healthy; better than reference (+3.0)" and rows["weak-target"][7] == "**yes**"
    assert rows["weak-target"][4] == "64.0 (avgpool)"  # the kNN column names a feature set other than CLS
    assert rows["weak-target"][8].startswith("knn 64.0 vs 61.0 for base (+3.0 points, margin 2): better than reference")
    assert rows["weak-source"][1] == "healthy; on par with reference (-1.0)" and rows["weak-source"][7] == "no"
    assert "6 of 7 runs done; **4 of 6 expected findings reproduced**" in page
    assert "took 7 minutes in total" in page  # 6 runs x 66 s
    for figure in ("std.png", "spectra.png", "rankme.png", "teacher.png", "loss.png", "comparison.png"):
        assert (plan.report_dir / figure).read_bytes()[:4] == b"\x89PNG"


def test_lidar_and_alpha_req_are_drawn_and_quoted_when_a_run_logged_them(tmp_path):
    plan, runs = handmade_plan(tmp_path)
    write_run(runs["base"].run_dir, runs["base"].config, 3.0, [12.0, 14.0])
    write_run(runs["one-prototype"].run_dir, runs["one-prototype"].config, 3.0, [12.0, 14.0])
    page = write_report(plan).read_text()
    assert not (plan.report_dir / "lidar.png").exists() and "LiDAR" not in page  # runs logged before LiDAR
    new = {"collapse/backbone_lidar": 7.5, "collapse/backbone_alpha_req": 1.25}
    write_run(runs["few-dims"].run_dir, runs["few-dims"].config, 3.0, [12.0, 14.0], extra=new)
    page = write_report(plan).read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `few-dims`"))
    assert "backbone LiDAR 7.5" in row and "backbone alpha-ReQ 1.25" in row
    for figure in ("lidar.png", "alpha_req.png"):
        assert (plan.report_dir / figure).read_bytes()[:4] == b"\x89PNG" and f"]({figure})" in page


def test_prototypes_used_is_quoted_only_for_runs_that_logged_it(tmp_path):
    """Partial prototype collapse (Govindarajan et al. 2024): the last count of prototypes some image is
    assigned to is in the run's numbers; runs logged before the measurement existed show nothing."""
    plan, runs = handmade_plan(tmp_path)
    write_run(runs["base"].run_dir, runs["base"].config, 3.0, [12.0, 14.0])
    used = {"collapse/teacher_prototypes_used": 23.0}
    write_run(runs["few-dims"].run_dir, runs["few-dims"].config, 3.0, [12.0, 14.0], extra=used)
    page = write_report(plan).read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in page.splitlines() if line.startswith("| `")}
    assert "prototypes used 23" in rows["few-dims"] and "prototypes used" not in rows["base"]
    assert (plan.report_dir / "teacher.png").read_bytes()[:4] == b"\x89PNG"


def test_spearman_by_hand_with_ties():
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ranks x: 1, 2.5, 2.5, 4 (a tie: the average rank); y: 1, 2, 4, 3. Centred: x -1.5, 0, 0, 1.5 and
    # y -1.5, -0.5, 1.5, 0.5; sum of products 3, sums of squares 4.5 and 5
    assert spearman([1.0, 5.0, 5.0, 9.0], [1.0, 2.0, 8.0, 3.0]) == pytest.approx(3 / (4.5 * 5) ** 0.5)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="same length"):
        spearman([1.0, 2.0], [1.0])


def test_rank_correlation_of_rankme_and_knn_is_in_the_report_when_the_matrix_asks(tmp_path):
    """Garrido et al. 2023 Fig. 4: the final eval-set RankMe of each run against its kNN top-1."""
    plan, runs = handmade_plan(tmp_path)
    ranked = {"base": (14.0, 61.0), "one-prototype": (3.0, 40.0), "few-dims": (8.0, 52.0), "weak-target": (11.0, 50.0)}
    for label, (rank, knn) in ranked.items():
        write_run(runs[label].run_dir, runs[label].config, 3.0, [rank, rank], knn=knn)
    assert "Spearman" not in write_report(plan).read_text()  # off unless the matrix asks for it
    plan.matrix.measurements.rank_correlation = True
    expected = spearman([14.0, 3.0, 8.0, 11.0], [61.0, 40.0, 52.0, 50.0])  # ranks 4,1,2,3 vs 4,1,3,2: 0.8
    assert expected == pytest.approx(0.8)
    assert "over 4 runs: **0.80**" in write_report(plan).read_text()
