"""Matrix files: the shipped matrices, and errors that name the file, key and value (what the lab sets on
every run when it plans them: test_matrix_plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinolite.config import ConfigError, load_config, save_config
from dinolite.lab.matrix import available_matrices, load_matrix, resolve_matrix
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.runner import check_run_dir, is_done

ROOT = Path(__file__).resolve().parents[2]
VALID = """\
name: t
output_dir: {out}
iterations: 200
measurements: {{every: 10, spectra: 4}}
runs:
  - {{label: dino, preset: demo, expect: healthy}}
  - {{label: no-centering, preset: demo, overrides: [teacher.center_momentum=1.0], expect: complete collapse}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("measurements:", "measurments:", r"m.yaml: unknown config key 'measurments'; did you mean 'measurements'\?"),
        ("every: 10", "evry: 10", r"unknown config key 'measurements.evry'; did you mean 'measurements.every'\?"),
        ("iterations: 200", "iterations: lots", r"m.yaml: invalid value for 'iterations', expected int"),
        ("iterations: 200", "iterations: 0", r"'iterations': 0; must be >= 1"),
        (
            "expect: complete collapse",
            "expect: complete colapse",
            r"runs\[1\].expect \(no-centering\): 'complete colapse' is not a finding; did you mean 'complete collapse'\?",
        ),
        ("label: dino,", "label: no-centering,", r"runs\[1\].label 'no-centering' is already the label of runs\[0\]"),
        ("label: dino,", "label: 'a b',", r"runs\[0\].label 'a b': use letters"),
        (
            "[teacher.center_momentum=1.0]",
            "[train.max_iterations=5]",
            r"runs\[1\].overrides \(no-centering\): 'train.max_iterations' is set by the lab from the matrix's iterations",
        ),
        (
            "[teacher.center_momentum=1.0]",
            "[teacher.center_momentun=1.0]",
            r"runs\[1\] \(no-centering\), preset 'demo': overrides: unknown config key 'teacher.center_momentun'; "
            r"did you mean 'teacher.center_momentum'\?",
        ),
        (
            "preset: demo, overrides",
            "preset: demo_nosuch, overrides",
            r"runs\[1\] \(no-centering\), preset 'demo_nosuch': unknown config preset 'demo_nosuch'; available presets: ",
        ),
        (
            "expect: complete collapse}",
            "expect: complete collapse, reference: dinoo}",
            r"runs\[1\].reference \(no-centering\): 'dinoo' is not another run's label; did you mean 'dino'\?",
        ),
        (
            "expect: complete collapse}",
            "expect: better than reference}",
            r"runs\[1\].expect \(no-centering\): 'better than reference' compares with another run; name it in 'reference'",
        ),
        (
            "measurements: {every: 10, spectra: 4}",
            "measurements: {every: 10, spectra: 4, knn: false}\nverdict: {comparison_metric: knn}",
            None,  # valid: no run compares
        ),
        (
            "measurements: {every: 10, spectra: 4}",
            "measurements: {every: 10, spectra: 4}\nverdict: {comparison_metric: knnn}",
            r"invalid value for 'verdict.comparison_metric': 'knnn'; did you mean 'knn'\?",
        ),
        (
            "measurements: {every: 10, spectra: 4}",
            "measurements: {every: 10, spectra: 4}\nverdict: {comparison_margin: -1.0}",
            r"invalid value for 'verdict.comparison_margin': -1.0; must be >= 0",
        ),
        (
            "expect: complete collapse}",
            "expect: complete collapse, features: avgpol}",
            r"runs\[1\].features \(no-centering\): 'avgpol' is not a feature set; did you mean 'avgpool'\?",
        ),
        (
            "expect: complete collapse}",
            "expect: complete collapse, verdict: {complete_std_ratio: 0.01}}",
            None,  # valid: a run replaces one threshold
        ),
        (
            "expect: complete collapse}",
            "expect: complete collapse, verdict: {complete_std_ration: 0.01}}",
            r"runs\[1\].verdict \(no-centering\): 'complete_std_ration' is not a threshold a run may set; "
            r"did you mean 'complete_std_ratio'\?",
        ),
        (
            "expect: complete collapse}",
            "expect: complete collapse, verdict: {comparison_margin: 5.0}}",
            r"'comparison_margin' is not a threshold a run may set",
        ),
        (
            "measurements: {every: 10, spectra: 4}",
            "measurements: {every: 500}",
            r"'measurements.every' = 500 exceeds 'iterations' = 200",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_the_value(tmp_path, old, new, message):
    template = VALID.replace("{{", "\0").replace("}}", "\1")  # keep the format braces out of the replace
    text = template.replace(old.replace("{", "\0").replace("}", "\1"), new.replace("{", "\0").replace("}", "\1"))
    assert text != template, old
    path = write(tmp_path, text.replace("\0", "{{").replace("\1", "}}"))
    if message is None:
        plan_matrix(path, prepare=False)
        return
    with pytest.raises(ConfigError, match=message) as info:
        plan_matrix(path, prepare=False)
    assert str(path) in str(info.value)


def test_a_comparison_needs_the_metric_it_reads(tmp_path):
    text = VALID.replace("spectra: 4}}", "spectra: 4, linear: false}}\nverdict: {{comparison_metric: linear}}")
    text = text.replace("expect: complete collapse}}", "expect: worse than reference, reference: dino}}")
    path = write(tmp_path, text)
    message = r"runs\[1\].expect \(no-centering\): 'worse than reference' reads the linear top-1, but 'measurements.linear' is false"
    with pytest.raises(ConfigError, match=message):
        plan_matrix(path, prepare=False)
    plan_matrix(write(tmp_path, text.replace("linear: false", "knn: false")), prepare=False)


def test_shipped_matrices_by_name():
    assert {"seeds", "vitb16"} <= set(available_matrices())
    assert resolve_matrix("seeds") == ROOT / "dinolite" / "configs" / "lab" / "seeds.yaml"
    with pytest.raises(ConfigError, match=r"unknown matrix 'seds'; did you mean 'seeds'\?"):
        resolve_matrix("seds")


def test_missing_required_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"matrix file not found: .*nosuch.yaml"):
        load_matrix(tmp_path / "nosuch.yaml")
    path = write(tmp_path, "name: t\noutput_dir: o\niterations: 10\nruns:\n  - {{preset: demo, expect: healthy}}\n")
    with pytest.raises(ConfigError, match=r"m.yaml: .*runs\[0\].label"):
        load_matrix(path)
    path = write(tmp_path, "name: t\noutput_dir: o\niterations: 10\nruns: []\n")
    with pytest.raises(ConfigError, match=r"'runs' is empty"):
        load_matrix(path)


@pytest.mark.parametrize("name", available_matrices())
def test_shipped_matrices_plan(name, tmp_path):
    plan = plan_matrix(name, tmp_path, prepare=False)
    assert len({r.label for r in plan.runs}) == len(plan.runs) >= 2
    assert all(r.config.train.max_iterations == plan.matrix.iterations for r in plan.runs)


def test_a_run_folder_of_another_config_is_refused_and_nothing_is_touched(tmp_path):
    plan = plan_matrix(write(tmp_path, VALID), prepare=False)
    run = plan.runs[1]
    run.run_dir.mkdir(parents=True)
    save_config(run.config, run.run_dir / "config.yaml")
    check_run_dir(run)  # the same config: fine (it resumes)
    assert not is_done(run)  # trained maybe, but no lab_result.json yet
    other = load_config("demo", ["teacher.center_momentum=0.5"])
    save_config(other, run.run_dir / "config.yaml")
    before = (run.run_dir / "config.yaml").read_bytes()
    with pytest.raises(
        ConfigError,
        match=r"run 'no-centering': .* holds a run with a different config "
        r"\(.*teacher.center_momentum: 0.5 -> 1.0",
    ):
        check_run_dir(run)
    assert (run.run_dir / "config.yaml").read_bytes() == before


def test_dino_fig7_runs_dino_alone_with_each_of_its_anti_collapse_parts_removed(tmp_path):
    """DINO's Fig. 7 on DINO itself: every run trains the DINO loss only, and each variant removes exactly
    what its label says."""
    plan = plan_matrix("dino_fig7", tmp_path, prepare=False)
    runs = {r.label: r for r in plan.runs}
    assert set(runs) == {"dino-both", "dino-sharpening-only", "dino-centering-only", "dino-no-ema"}
    for run in runs.values():
        cfg = run.config
        assert run.spec.preset == "demo_dino" and cfg.train.method == "dinov2"
        assert cfg.ibot.loss_weight == 0 and cfg.ibot.mask_sample_probability == 0 and cfg.dino.koleo_loss_weight == 0
        assert "Fig. 7" in run.spec.why or "Table 7" in run.spec.why
    both = runs["dino-both"].config
    assert runs["dino-both"].spec.expect == "healthy"
    assert both.teacher.center_momentum < 1 and both.teacher.teacher_temp < both.teacher.student_temp
    assert both.ema.momentum > 0
    assert runs["dino-sharpening-only"].config.teacher.center_momentum == 1.0  # the centre never moves from 0
    centering = runs["dino-centering-only"].config.teacher
    assert centering.teacher_temp == centering.warmup_teacher_temp == centering.student_temp
    assert runs["dino-no-ema"].config.ema.momentum == runs["dino-no-ema"].config.ema.final_momentum == 0.0
    assert all(runs[label].spec.expect == "complete collapse" for label in set(runs) - {"dino-both"})


def test_jepa_removes_each_predictive_methods_anti_collapse_part_beside_its_healthy_preset(tmp_path):
    """I-JEPA with momentum 0 (the target encoder is the context encoder) and LeJEPA with SIGReg's weight 0
    (the prediction term alone), each beside its preset unchanged: only the named part differs."""
    plan = plan_matrix("jepa", tmp_path, prepare=False)
    runs = {r.label: r for r in plan.runs}
    assert set(runs) == {"ijepa", "ijepa-no-ema", "lejepa", "lejepa-no-sigreg"}
    assert runs["ijepa"].config.ema.momentum > 0 and runs["ijepa"].config.train.method == "ijepa"
    no_ema = runs["ijepa-no-ema"].config
    assert no_ema.ema.momentum == no_ema.ema.final_momentum == 0.0
    assert runs["lejepa"].config.lejepa.sigreg_weight > 0 and runs["lejepa"].config.train.method == "lejepa"
    assert runs["lejepa-no-sigreg"].config.lejepa.sigreg_weight == 0.0
    assert {label: r.spec.expect for label, r in runs.items()} == {
        "ijepa": "healthy",
        "ijepa-no-ema": "complete collapse",
        "lejepa": "healthy",
        "lejepa-no-sigreg": "complete collapse",
    }
    assert runs["ijepa"].spec.features == runs["ijepa-no-ema"].spec.features == "avgpool"  # no CLS objective


def test_prototypes_varies_only_the_number_of_prototypes_of_the_healthy_dinov2_demo(tmp_path):
    """Partial prototype collapse against K (Govindarajan et al. 2024): the same demo run, K = 8, 32, 128."""
    plan = plan_matrix("prototypes", tmp_path, prepare=False)
    runs = {r.label: r.config for r in plan.runs}
    assert {label: (cfg.dino.head_n_prototypes, cfg.ibot.head_n_prototypes) for label, cfg in runs.items()} == {
        "k8": (8, 8),
        "k32": (32, 32),
        "k128": (128, 128),
    }
    assert all(cfg.train.method == "dinov2" and cfg.teacher.center_momentum < 1 for cfg in runs.values())
    assert all(r.spec.expect == "healthy" for r in plan.runs)


def test_rankme_hparams_is_a_three_by_three_simclr_temperature_and_learning_rate_grid(tmp_path):
    """Garrido et al. 2023 Fig. 4: every (temperature, learning rate) pair once, nothing else changed."""
    plan = plan_matrix("rankme_hparams", tmp_path, prepare=False)
    grid = {(r.config.joint_embedding.temperature, r.config.optim.base_lr) for r in plan.runs}
    assert grid == {(t, lr) for t in (0.1, 0.2, 0.5) for lr in (0.001, 0.004, 0.016)} and len(plan.runs) == 9
    assert all(r.config.train.method == "simclr" for r in plan.runs)


def test_registers_runs_the_dinov2_demo_with_0_and_4_registers(tmp_path):
    """Darcet et al. 2024: the same demo run with and without 4 register tokens."""
    plan = plan_matrix("registers", tmp_path, prepare=False)
    registers = {r.label: r.config.student.num_register_tokens for r in plan.runs}
    assert registers == {"no-registers": 0, "registers4": 4}
    assert all(r.config.train.method == "dinov2" for r in plan.runs)


def test_stepwise_runs_barlow_twins_simclr_and_vicreg_from_a_small_projector_init_with_eigenvalue_traces(tmp_path):
    """Simon et al. 2023, Fig. 1: each joint-embedding demo from a small projector initialisation, its top
    eigenvalues logged at every measurement."""
    plan = plan_matrix("stepwise", tmp_path, prepare=False)
    assert {r.config.train.method for r in plan.runs} == {"barlow_twins", "simclr", "vicreg"}
    assert all(r.spec.preset == f"demo_{r.config.train.method}" for r in plan.runs)
    scales = {r.label: r.config.student.init_scale for r in plan.runs}
    assert scales == {
        "barlow-twins-small-init": 0.001,
        "simclr-small-init": 0.001,
        "vicreg-small-init": 0.001,
        "barlow-twins-default-init": 1.0,  # the control: the preset's own initialisation
    }
    for run in plan.runs:
        assert run.config.student.init_scale_modules == ["projector"]
        assert run.config.monitor.eigenvalues == 8 and run.config.monitor.every == 2
    assert plan_matrix("seeds", tmp_path / "seeds", prepare=False).runs[0].config.monitor.eigenvalues == 0


def test_recipes_simclr_is_small_simclr_over_crop_scale_and_temperature_papers_point_first(tmp_path):
    """Issue 26 item 4: the generic preset (flips on) over crop minimum scale x temperature, nothing else."""
    plan = plan_matrix("recipes_simclr", tmp_path, prepare=False)
    grid = [(r.config.crops.global_crops_scale[0], r.config.joint_embedding.temperature) for r in plan.runs]
    assert sorted(grid) == sorted((s, t) for s in (0.08, 0.25, 0.6) for t in (0.2, 0.5))
    assert grid[0] == (0.08, 0.5)  # SimCLR's published values first: the choice's ties go to them
    assert all(r.spec.preset == "small_simclr" and r.spec.expect == "healthy" for r in plan.runs)
    assert all(r.config.joint_embedding.view1.horizontal_flip_p == 0.5 for r in plan.runs)
    assert all(r.config.train.max_iterations == 300 for r in plan.runs)


@pytest.mark.parametrize(
    ("matrix", "preset", "grid", "paper"),
    [
        ("recipes_barlow_twins", "small_barlow_twins", {(0.08, None), (0.25, None), (0.6, None)}, (0.08, None)),
        ("recipes_byol", "small_byol", {(0.08, None), (0.25, None), (0.6, None)}, (0.08, None)),
        ("recipes_simsiam", "small_simsiam", {(0.2, None), (0.4, None), (0.6, None)}, (0.2, None)),
        (
            "recipes_msn",
            "small_msn",
            {(g, f) for g in (0.3, 0.6) for f in ((0.05, 0.3), (0.3, 0.6))},
            (0.3, (0.05, 0.3)),
        ),
    ],
)
def test_recipes_vary_only_the_crop_scales_of_the_generic_preset_papers_point_first(
    tmp_path, matrix, preset, grid, paper
):
    """Issue 26 item 4: the crop-scale grids (Barlow Twins, BYOL, SimSiam, MSN) change the generic preset's crop
    scales and nothing else (flips stay on), at the preset's budget, measuring only the end kNN."""
    plan = plan_matrix(matrix, tmp_path, prepare=False)
    shipped = load_config(preset)
    focal = preset == "small_msn"
    points = [
        (r.config.crops.global_crops_scale[0], tuple(r.config.crops.local_crops_scale) if focal else None)
        for r in plan.runs
    ]
    assert len(points) == len(set(points)) and set(points) == grid
    assert points[0] == paper  # the paper's values first: the choice's ties go to them
    for run in plan.runs:
        assert run.spec.preset == preset and run.spec.expect == "healthy"
        own = load_config(preset, list(run.spec.overrides))
        for key in ("global_crops_scale", "local_crops_scale"):
            setattr(own.crops, key, getattr(shipped.crops, key))
        assert own == shipped  # flips, jitter, blur, method, budget: all the preset's own
        assert run.config.train.max_iterations == 300
    assert plan.matrix.measurements.spectra == 0 and not plan.matrix.measurements.linear


def test_recipes_vicreg_varies_the_crop_scale_then_the_expanders_width_papers_point_first(tmp_path):
    """Issue 26 item 4: VICReg's grid is small_vicreg over the crop minimum scale, then the expander's width at
    the paper's crop scale and at 0.6; every other value is the shipped preset's (flips on)."""
    plan = plan_matrix("recipes_vicreg", tmp_path, prepare=False)
    shipped = load_config("small_vicreg")
    points = []
    for run in plan.runs:
        cfg = load_config("small_vicreg", list(run.spec.overrides))
        head = cfg.joint_embedding
        points.append((cfg.crops.global_crops_scale[0], head.projector_hidden_dim, head.projector_out_dim))
        cfg.crops.global_crops_scale = shipped.crops.global_crops_scale
        head.projector_hidden_dim = shipped.joint_embedding.projector_hidden_dim
        head.projector_out_dim = shipped.joint_embedding.projector_out_dim
        assert cfg == shipped and run.spec.expect == "healthy"
        assert run.config.train.max_iterations == 300
    assert points[0] == (0.08, 512, 256)  # VICReg's release's crops and small_vicreg's expander before the grid
    assert set(points) == {(0.08, 512, 256), (0.6, 512, 256), (0.25, 512, 256), (0.08, 2048, 2048), (0.6, 2048, 2048)}
    assert len(points) == len(set(points))
    assert plan.matrix.measurements.spectra == 0 and not plan.matrix.measurements.linear
