"""dinolite/jobs/slurm_options.py: the launchers' resource options, and configs that cannot run on them."""

from __future__ import annotations

import argparse

import pytest

from dinolite.config import ConfigError, load_config
from dinolite.jobs.slurm_options import add_slurm_arguments, check_training_fits, resources_from_args
from dinolite.jobs.slurm_submit import SlurmResources


def _resources(argv: list[str], job_name: str = "dinolite-demo") -> SlurmResources:
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    return resources_from_args(parser.parse_args(argv), argv, job_name)


def test_the_defaults_are_one_node_of_eight_gpus_for_2800_minutes() -> None:
    resources = _resources([])
    assert (resources.nodes, resources.gpus_per_node, resources.time_min, resources.signal_delay_s) == (1, 8, 2800, 120)
    assert resources.job_name == "dinolite-demo" and resources.world_size == 8


def test_dinov2s_option_names_are_accepted() -> None:
    resources = _resources(["--ngpus", "4", "--timeout", "60", "--nodes", "2"])
    assert (resources.gpus_per_node, resources.time_min, resources.world_size) == (4, 60, 8)


def test_tasks_per_node_alone_asks_for_a_cpu_job() -> None:
    assert _resources(["--tasks-per-node", "3"]).gpus_per_node == 0
    assert _resources(["--tasks-per-node=3"]).world_size == 3
    assert _resources(["--tasks-per-node", "3", "--gpus-per-node", "3"]).gpus_per_node == 3


@pytest.mark.parametrize("argv", [["--nodes", "0"], ["--mem-gb", "-1"], ["--cpus-per-task", "0"]])
def test_impossible_numbers_are_refused_at_parse_time(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _resources(argv)


@pytest.mark.parametrize(
    "override, message",
    [
        ("distributed.backend=nccl", "distributed.backend='nccl' needs GPUs"),
        ("train.device=cuda", "train.device='cuda' needs GPUs"),
    ],
)
def test_a_cpu_job_refuses_a_config_that_needs_gpus(override: str, message: str) -> None:
    cfg = load_config("demo", [override])
    with pytest.raises(ConfigError, match=message):
        check_training_fits(cfg, SlurmResources(gpus_per_node=0))
    check_training_fits(cfg, SlurmResources(gpus_per_node=1))
