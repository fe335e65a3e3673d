"""Every flag of DINOv2's training script and Slurm launcher is taken by dinolite-train / dinolite-slurm, or
refused saying what to run instead, and docs/interop.md says which (facebookresearch/dinov2 at b8931f7)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from dinolite.commands import slurm, train
from dinolite.config_aliases import DINOv2KeyNotice

ROOT = Path(__file__).resolve().parents[2]
VITL16_SHORT = ROOT / "tests" / "fixtures" / "dinov2" / "vitl16_short.yaml"
# dinov2/train/train.py's get_args_parser (also the Slurm launcher's, which adds dinov2/run/submit.py's)
TRAINING_FLAGS = ("--config-file", "--no-resume", "--eval-only", "--eval", "--output-dir", "--output_dir")
SLURM_FLAGS = ("--ngpus", "--gpus", "--gpus-per-node", "--nodes", "--nnodes", "--timeout", "--partition",
               "--use-volta32", "--comment", "--exclude")  # fmt: skip
REFUSED = {"--eval-only": [], "--eval": ["linear"]}  # the flag, and its value


def test_every_dinov2_flag_is_on_the_interop_page():
    page = (ROOT / "docs" / "interop.md").read_text()
    missing = [f for f in TRAINING_FLAGS + SLURM_FLAGS if f"`{f}`" not in page and f"`{f} " not in page]
    assert not missing, f"docs/interop.md does not say what dinolite does with DINOv2's {missing}"


@pytest.mark.parametrize(("command", "flags"), [(train, TRAINING_FLAGS), (slurm, TRAINING_FLAGS + SLURM_FLAGS)])
def test_every_dinov2_flag_is_known_to_the_command(command, flags):
    known = command.build_parser()._option_string_actions
    assert not [f for f in flags if f not in known], command.__name__


@pytest.mark.parametrize("command", [train, slurm])
@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_dinov2_eval_flags_are_refused_naming_what_to_run(command, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--config", "demo", flag, *REFUSED[flag], "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{flag}: DINOv2's" in err and "--backbone RUN_DIR" in err
    assert "--eval-only" not in command.build_parser().format_help()  # not dinolite's: hidden from --help


def test_dinov2_output_dir_spelling_sets_the_run_directory(tmp_path, capsys):
    assert train.main(["--output_dir", str(tmp_path / "run"), "--dry-run"]) == 0
    assert f"output dir {tmp_path / 'run'}" in capsys.readouterr().out


def test_dinov2_slurm_flag_names_render_the_same_job(tmp_path, capsys):
    argv = ["--config-file", str(VITL16_SHORT), "--output_dir", str(tmp_path / "run"), "--dry-run"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DINOv2KeyNotice)
        assert slurm.main([*argv, "--nnodes", "2", "--gpus", "4", "--use-volta32", "--partition", "learn"]) == 0
        dinov2_names = capsys.readouterr().out
        assert slurm.main([*argv, "--nodes", "2", "--gpus-per-node", "4", "--constraint", "volta32gb",
                           "--partition", "learn"]) == 0  # fmt: skip
    assert dinov2_names == capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --constraint=volta32gb"):
        assert line in dinov2_names.splitlines(), line
