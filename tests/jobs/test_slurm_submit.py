"""dinolite/jobs/slurm_submit.py: resources to sbatch parameters, the job's setup lines and its folders."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dinolite.jobs.slurm_submit import (
    SlurmLaunchError,
    SlurmResources,
    job_setup_lines,
    log_dir_for,
    resolve_job_dir,
    sbatch_parameters,
    submitit_command,
)


def test_a_gpu_job_runs_one_task_per_gpu_with_ten_cpus_each() -> None:
    resources = SlurmResources(nodes=4, gpus_per_node=8)
    assert (resources.ntasks_per_node, resources.world_size, resources.cpus) == (8, 32, 10)
    params = sbatch_parameters(resources, setup=["echo hi"])
    assert params["gpus_per_node"] == 8 and params["ntasks_per_node"] == 8 and params["nodes"] == 4
    assert params["additional_parameters"] == {"requeue": True} and params["setup"] == ["echo hi"]
    assert "mem" not in params and "partition" not in params


def test_a_cpu_job_asks_for_no_gpu() -> None:
    resources = SlurmResources(gpus_per_node=0, tasks_per_node=2, partition="debug", mem_gb=1.5)
    params = sbatch_parameters(resources)
    assert "gpus_per_node" not in params and (params["ntasks_per_node"], params["cpus_per_task"]) == (2, 1)
    assert params["partition"] == "debug" and params["mem"] == "1536MB"
    assert sbatch_parameters(SlurmResources(gpus_per_node=0, mem_gb=16))["mem"] == "16GB"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nodes": 0}, "--nodes=0: must be >= 1"),
        ({"time_min": 2, "signal_delay_s": 120}, "--time=2 minutes is not longer than the 120 s warning signal"),
        ({"gpus_per_node": -1}, "--gpus-per-node=-1: must be >= 0"),
        ({"gpus_per_node": 8, "tasks_per_node": 2}, "--tasks-per-node=2 with --gpus-per-node=8"),
        ({"cpus_per_task": 0}, "--cpus-per-task=0: must be >= 1"),
        ({"mem_gb": 0}, "--mem-gb=0: must be > 0"),
        ({"job_name": "my job"}, "--job-name='my job': use letters"),
    ],
)
def test_an_impossible_request_names_the_option(fields: dict, message: str) -> None:
    with pytest.raises(SlurmLaunchError, match=message.replace("(", r"\(").replace("+", r"\+")):
        sbatch_parameters(SlurmResources(**fields))


def test_setup_lines_put_the_checkout_first_and_bound_threads(tmp_path: Path) -> None:
    root = tmp_path / "a b"
    lines = job_setup_lines(SlurmResources(gpus_per_node=0, cpus_per_task=3), root)
    assert lines == [
        f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export OMP_NUM_THREADS=3",
    ]
    assert (
        submitit_command(root, python="/usr/bin/python3")
        == f"/usr/bin/python3 -u -m submitit.core._submit {shlex.quote(str(root))}"
    )


def test_logs_go_beside_the_first_folder_without_a_job_id(tmp_path: Path) -> None:
    assert log_dir_for(tmp_path / "run") == tmp_path / "run" / "slurm_logs"
    assert log_dir_for(tmp_path / "runs" / "job_%j" / "out") == tmp_path / "runs" / "slurm_logs"
    assert resolve_job_dir(tmp_path / "job_%j", "1234") == tmp_path / "job_1234"
