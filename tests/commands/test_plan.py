"""``dinolite-plan`` and ``dinolite-slurm --plan`` (dinolite/commands/plan.py)."""

from __future__ import annotations

import pytest

from dinolite.commands import plan as plan_command
from dinolite.commands import slurm as slurm_command


@pytest.mark.slow
def test_the_command_prints_a_plan_and_exits_3_when_the_run_does_not_fit(capsys):
    argv = ["--config", "demo", "--nodes", "1", "--gpus-per-node", "2", "--gpu", "a100-40gb"]
    assert plan_command.main([*argv, "train.batch_size_per_gpu=4"]) == 0
    out = capsys.readouterr().out
    assert "2 GPUs" in out and "FITS" in out
    assert plan_command.main([*argv, "--usable", "1e-6", "train.batch_size_per_gpu=4"]) == 3
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "what to change" in out and "activation_checkpointing=true" in out


def test_an_unknown_gpu_is_an_error_naming_the_known_ones(capsys):
    assert plan_command.main(["--config", "demo", "--gpu", "tpu-v5"]) != 0
    assert "a100-80gb" in capsys.readouterr().err


def test_slurm_plan_needs_a_training_config_on_gpus(capsys):
    with pytest.raises(SystemExit):
        slurm_command.main(["--module", "dinolite.commands.knn", "--plan"])
    with pytest.raises(SystemExit):
        slurm_command.main(["--config", "demo", "--gpus-per-node", "0", "--plan"])
    assert "--plan" in capsys.readouterr().err


@pytest.mark.slow
def test_slurm_plan_plans_without_submitting(capsys):
    code = slurm_command.main(["--config", "demo", "--nodes", "2", "--gpus-per-node", "2", "--plan"])
    out = capsys.readouterr().out
    assert code == 0 and "2 node(s) x 2 a100-80gb = 4 GPUs" in out
