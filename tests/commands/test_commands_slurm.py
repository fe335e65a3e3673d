"""launch/slurm.py and dinolite.jobs.slurm without a Slurm cluster: sbatch scripts, argument and config
errors (caught before anything is submitted), and the signal -> stop flag -> checkpoint -> requeue path
of the submitit job with a stand-in training function."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from dinolite.jobs import slurm, slurm_job_state, slurm_submit

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "launch" / "slurm.py"


def _load_launcher():
    spec = importlib.util.spec_from_file_location("dinolite_launch_slurm", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()


def run_launcher(argv: list[str], capsys) -> tuple[int, str, str]:
    code = launcher.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sbatch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("#SBATCH")]


# --------------------------------------------------------------------------------------------------
# Dry runs
# --------------------------------------------------------------------------------------------------


def test_dry_run_vitl16_4_nodes_x_8_gpus_cli(tmp_path):
    """The exact command of the issue, as a user runs it: a 32-task script, nothing submitted."""
    proc = subprocess.run(
        [
            sys.executable,
            str(LAUNCHER),
            "--config",
            "vitl16",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--dry-run",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    flags = set(sbatch_lines(proc.stdout))
    for expected in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --time=2800",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "#SBATCH --job-name=dinolite-vitl16",
        f"#SBATCH --output={tmp_path}/run/slurm_logs/%j_0_log.out",
    ):
        assert expected in flags, f"{expected} missing from\n{proc.stdout}"
    srun = [line for line in proc.stdout.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0] and f"{tmp_path}/run/slurm_logs" in srun[0]
    assert "4 nodes x 8 tasks = 32 tasks" in proc.stdout
    assert "arch: vit_large" in proc.stdout  # the resolved config follows the script
    assert f"output_dir: {tmp_path}/run" in proc.stdout
    assert "nothing submitted" in proc.stdout
    assert not (tmp_path / "run").exists()  # a dry run creates nothing


def test_dry_run_cpu_tasks(capsys, tmp_path):
    code, out, _ = run_launcher(
        [
            "--config",
            "demo",
            "--nodes",
            "2",
            "--tasks-per-node",
            "3",
            "--time",
            "30",
            "--partition",
            "cpu",
            "--account",
            "proj",
            "--qos",
            "low",
            "--constraint",
            "skylake",
            "--exclude",
            "n[01-02]",
            "--comment",
            "ssl run",
            "--mem-gb",
            "16",
            "--output-dir",
            str(tmp_path / "o"),
            "--dry-run",
            "optim.base_lr=0.002",
        ],
        capsys,
    )
    assert code == 0
    flags = set(sbatch_lines(out))
    assert not any("gpus" in f for f in flags), "--tasks-per-node alone is a CPU job"
    for expected in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=3",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=30",
        "#SBATCH --partition=cpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=low",
        "#SBATCH --constraint=skylake",
        "#SBATCH --exclude='n[01-02]'",
        "#SBATCH --comment='ssl run'",
        "#SBATCH --mem=16GB",
    ):
        assert expected in flags, expected
    assert "export OMP_NUM_THREADS=1" in out
    assert f"export PYTHONPATH={ROOT}" in out  # the job imports the submitting checkout
    assert "2 nodes x 3 tasks = 6 tasks" in out
    assert "base_lr: 0.002" in out  # overrides are applied before printing


def test_overrides_may_come_between_options(capsys):
    code, out, _ = run_launcher(
        ["--config", "demo", "train.max_iterations=7", "--gpus-per-node", "0", "optim.base_lr=0.5", "--dry-run"],
        capsys,
    )
    assert code == 0
    assert "max_iterations: 7" in out and "base_lr: 0.5" in out


def test_output_dir_with_job_id_puts_logs_next_to_it(capsys, tmp_path):
    code, out, _ = run_launcher(
        [
            "--config",
            "demo",
            "--gpus-per-node",
            "0",
            "--tasks-per-node",
            "2",
            "--time",
            "10",
            "--output-dir",
            str(tmp_path / "runs" / "%j"),
            "--dry-run",
        ],
        capsys,
    )
    assert code == 0
    assert f"#SBATCH --output={tmp_path}/runs/slurm_logs/%j_0_log.out" in out
    assert f"output_dir: {tmp_path}/runs/%j" in out
    assert slurm_submit.resolve_job_dir(tmp_path / "runs" / "%j", "123") == tmp_path / "runs" / "123"
    assert slurm_submit.log_dir_for(tmp_path / "a") == tmp_path / "a" / "slurm_logs"


def test_entry_and_module_dry_run(capsys, tmp_path):
    script = tmp_path / "knn.py"
    script.write_text("print('hi')\n")
    code, out, _ = run_launcher(
        ["--entry", str(script), "--gpus-per-node", "1", "--time", "60", "--dry-run", "--", "--k", "20"], capsys
    )
    assert code == 0
    assert "#SBATCH --gpus-per-node=1" in out and "#SBATCH --job-name=dinolite-knn" in out
    assert f"every task runs: python {script} --k 20" in out
    code, out, _ = run_launcher(["--module", "dinolite.commands.info", "--gpus-per-node", "0", "--dry-run"], capsys)
    assert code == 0 and "every task runs: python -m dinolite.commands.info" in out


def test_module_without_a_command_line_is_refused(capsys):
    """A library module runs nothing under `python -m`: the job would do nothing (the eval modules did once)."""
    code, _, err = run_launcher(["--module", "dinolite.eval.knn", "--gpus-per-node", "0", "--dry-run"], capsys)
    assert code == 2 and "'dinolite.eval.knn' is not a dinolite command" in err and "dinolite.commands.<name>" in err


# --------------------------------------------------------------------------------------------------
# Errors: before submission, naming the option / key at fault
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_submission(monkeypatch):
    """Fail the test if anything reaches the executor."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(slurm_submit, "make_executor", forbidden)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "demo", "optim.base_lrr=0.1"], "optim.base_lrr"),
        (["--config", "demo", "optim.base_lr=fast"], "optim.base_lr"),
        (["--config", "no_such_preset"], "unknown config preset 'no_such_preset'"),
        (["--config", "demo", "--gpus-per-node", "0", "distributed.backend=nccl"], "distributed.backend='nccl'"),
        (["--config", "demo", "--gpus-per-node", "8", "--tasks-per-node", "2"], "--tasks-per-node=2"),
        (["--config", "demo", "--time", "2"], "--time=2 minutes"),
        (["--config", "demo", "--job-name", "a b"], "--job-name='a b'"),
        (["--entry", "does/not/exist.py"], "--entry 'does/not/exist.py'"),
        (["--module", "dinolite.no_such_module"], "--module 'dinolite.no_such_module'"),
    ],
)
def test_bad_request_fails_before_submission(argv, message, capsys, no_submission):
    code, out, err = run_launcher(argv, capsys)  # no --dry-run: it would submit if it got that far
    assert code == 2
    assert message in err, err
    assert "submitted" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "demo", "--module", "x"], "not allowed with argument"),
        (["--nodes", "2"], "one of the arguments --config/--config-file --entry --module is required"),
        (["--config", "demo", "--", "--k", "3"], "only for --entry/--module"),
        (["--module", "dinolite.config", "a.b=1"], "only apply to --config"),
        (["--config", "demo", "--max-requeues", "-1"], "argument --max-requeues: expected an integer >= 0, got '-1'"),
        (["--config", "demo", "--nodes", "two"], "argument --nodes/--nnodes: expected an integer >= 1, got 'two'"),
        (["--config", "demo", "--nodes", "0"], "argument --nodes/--nnodes: expected an integer >= 1, got '0'"),
        (["--config", "demo", "--cpus-per-task", "0"], "argument --cpus-per-task: expected an integer >= 1, got '0'"),
    ],
)
def test_argument_errors(argv, message, capsys, no_submission):
    with pytest.raises(SystemExit) as exc:
        launcher.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_tasks_per_node_with_gpus_is_rejected_in_resources():
    with pytest.raises(slurm_submit.SlurmLaunchError, match="one task per GPU"):
        slurm_submit.SlurmResources(gpus_per_node=4, tasks_per_node=8).validate()
    assert slurm_submit.SlurmResources(gpus_per_node=4, tasks_per_node=4).world_size == 4
    assert slurm_submit.SlurmResources(nodes=3, gpus_per_node=0, tasks_per_node=5).world_size == 15


# --------------------------------------------------------------------------------------------------
# Inside the job: USR2 -> flag -> checkpoint -> requeue -> resume
# --------------------------------------------------------------------------------------------------


@dataclass
class StandInResult:
    status: str
    iteration: int
    checkpoint_path: Optional[Path]


class StandInTrainer:
    """A loop with the contract of ``dinolite.train.loop.train``: resumes from ``checkpoint.json`` (written
    atomically), checks ``stop_requested`` after each iteration, checkpoints and returns "preempted".
    ``signal_at`` sends the real preemption signal to this process after that many iterations of a run."""

    def __init__(self, total: int, signal_at: Optional[int] = None) -> None:
        self.total = total
        self.signal_at = signal_at
        self.executed: list[int] = []

    def __call__(self, cfg, output_dir: Path, env, stop_requested: Callable[[], bool]) -> StandInResult:
        ckpt = Path(output_dir) / "checkpoint.json"
        iteration = json.loads(ckpt.read_text())["iteration"] if ckpt.exists() else 0
        while iteration < self.total:
            self.executed.append(iteration)
            iteration += 1
            if self.signal_at is not None and iteration == self.signal_at:
                os.kill(os.getpid(), slurm.preemption_signal())  # delivered before the next bytecode
            if stop_requested():
                slurm.write_json_atomic(ckpt, {"iteration": iteration})
                return StandInResult("preempted", iteration, ckpt)
        slurm.write_json_atomic(ckpt, {"iteration": iteration})
        return StandInResult("finished", iteration, ckpt)


def slurm_environ(job_id: str = "4242", restarts: int = 0) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_RESTART_COUNT": str(restarts),
    }


@pytest.fixture
def slurm_env(monkeypatch):
    def apply(restarts: int) -> dict[str, str]:
        environ = slurm_environ(restarts=restarts)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        return environ

    return apply


def make_job(tmp_path: Path, trainer: StandInTrainer, requeued: list[str], max_requeues: int = 3):
    from dinolite.config import load_config, to_dict

    return slurm.SlurmTrainingJob(
        config=to_dict(load_config("demo")),
        output_dir=str(tmp_path / "%j"),
        max_requeues=max_requeues,
        train_entry=trainer,
        requeue=requeued.append,
    )


def test_signal_checkpoints_requeues_and_resumes_without_losing_iterations(tmp_path, slurm_env):
    requeued: list[str] = []
    handler_before = signal.getsignal(slurm.preemption_signal())

    first = StandInTrainer(total=10, signal_at=4)
    job = make_job(tmp_path, first, requeued)
    slurm_env(restarts=0)
    with pytest.raises(SystemExit) as exc:  # result-less exit: submitit must not mark the job done
        job()
    assert exc.value.code == slurm.REQUEUED_EXIT_CODE
    assert requeued == ["4242"]
    assert first.executed == [0, 1, 2, 3]
    out_dir = tmp_path / "4242"  # %j resolved to the job id
    assert json.loads((out_dir / "checkpoint.json").read_text()) == {"iteration": 4}
    assert signal.getsignal(slurm.preemption_signal()) is handler_before  # handler restored

    second = StandInTrainer(total=10)  # the requeued job: same id, SLURM_RESTART_COUNT=1
    job = make_job(tmp_path, second, requeued)
    slurm_env(restarts=1)
    result = job()
    assert result.status == "finished" and result.iteration == 10
    assert requeued == ["4242"]
    assert first.executed + second.executed == list(range(10))  # every iteration exactly once

    attempts = json.loads((out_dir / slurm_submit.ATTEMPTS_FILE).read_text())
    assert [(a["restart_count"], a["status"], a["iteration"], a["requeued"], a["signal"]) for a in attempts] == [
        (0, "preempted", 4, True, "SIGUSR2"),
        (1, "finished", 10, False, None),
    ]


def test_requeue_budget_exhausted_ends_with_the_checkpoint(tmp_path, slurm_env):
    requeued: list[str] = []
    trainer = StandInTrainer(total=10, signal_at=2)
    slurm_env(restarts=2)
    result = make_job(tmp_path, trainer, requeued, max_requeues=2)()
    assert result.status == "preempted" and result.iteration == 2
    assert requeued == []
    attempts = json.loads((tmp_path / "4242" / slurm_submit.ATTEMPTS_FILE).read_text())
    assert attempts[-1]["requeued"] is False


def test_failed_requeue_is_an_error_naming_the_job(tmp_path, slurm_env):
    def broken_requeue(job_id: str) -> None:
        raise subprocess.CalledProcessError(
            1, ["scontrol", "requeue", job_id], stderr="Requested operation is disabled"
        )

    trainer = StandInTrainer(total=10, signal_at=1)
    job = make_job(tmp_path, trainer, [])
    job.requeue = broken_requeue
    slurm_env(restarts=0)
    with pytest.raises(RuntimeError, match=r"job 4242 checkpointed but could not be requeued.*disabled"):
        job()


def test_submitit_pickles_the_job(tmp_path):
    """What the executor does with the job: cloudpickle round trip keeps the config and the entries."""
    import cloudpickle

    from dinolite.config import load_config, to_dict

    job = slurm.SlurmTrainingJob(config=to_dict(load_config("demo")), output_dir=str(tmp_path), max_requeues=4)
    clone = cloudpickle.loads(cloudpickle.dumps(job))
    assert clone == job and clone.requeue is slurm.scontrol_requeue
    assert slurm.resolve_callable(clone.init_distributed_entry).__name__ == "init_distributed"
    with pytest.raises(slurm_submit.SlurmLaunchError, match="package.module:function"):
        slurm.resolve_callable("no_colon")


def test_the_job_carries_the_users_grant_for_what_the_config_asks(tmp_path, slurm_env, monkeypatch):
    """--allow-pipe-sources at submission reaches the job (pickled with it), whatever Slurm copies of the
    environment; without it the job refuses the config it was handed (issue 24)."""
    import cloudpickle

    from dinolite.config import ConfigError, OptIns, load_config, to_dict

    monkeypatch.delenv("DINOLITE_ALLOW_PIPE_SOURCES", raising=False)
    with OptIns(pipe_sources=True).applied():
        config = to_dict(load_config("demo", ["data.source=[pipe:cat shard.tar]"]))
    slurm_env(restarts=0)
    job = slurm.SlurmTrainingJob(config=config, output_dir=str(tmp_path / "%j"), train_entry=StandInTrainer(total=2))
    with pytest.raises(ConfigError, match=r"submitted with: data\.source\[0\] = 'pipe:cat shard\.tar'"):
        job()
    job.opt_ins = OptIns(pipe_sources=True)
    clone = cloudpickle.loads(cloudpickle.dumps(job))
    assert clone.opt_ins == job.opt_ins and clone().status == "finished"
    assert "DINOLITE_ALLOW_PIPE_SOURCES" not in os.environ  # the grant lasts as long as the job


def test_task_and_scontrol_parsing():
    task = slurm.SlurmTask.from_environ({"SLURM_JOB_ID": "77", "SLURM_PROCID": "3", "SLURM_RESTART_COUNT": "2"})
    assert task == slurm.SlurmTask(job_id="77", rank=3, restart_count=2)
    assert slurm.SlurmTask.from_environ({"SLURM_JOB_ID": "9"}).restart_count == 0
    with pytest.raises(RuntimeError, match="SLURM_JOB_ID is not set"):
        slurm.SlurmTask.from_environ({})
    line = (
        "JobId=12 JobName=dinolite-demo UserId=root(0) JobState=PENDING Reason=BeginTime Requeue=1 "
        "Restarts=1 BatchFlag=1 ExitCode=0:0 RunTime=00:00:00"
    )
    info = slurm_job_state.parse_scontrol_job(line)
    assert (info.job_id, info.state, info.restarts, info.exit_code, info.finished) == ("12", "PENDING", 1, "0:0", False)
    assert slurm_job_state.parse_scontrol_job(line.replace("PENDING", "COMPLETED")).finished
    with pytest.raises(ValueError, match="JobState"):
        slurm_job_state.parse_scontrol_job("slurm_load_jobs error: Invalid job id specified")


def test_entrypoint_job_runs_a_script_with_its_arguments(tmp_path):
    script = tmp_path / "echo_args.py"
    out = tmp_path / "args.json"
    script.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    assert slurm.SlurmEntrypointJob(str(script), ["--k", "5"], is_module=False)() == 0
    assert json.loads(out.read_text()) == ["--k", "5"]
    failing = tmp_path / "fail.py"
    failing.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match="exited with status 3"):
        slurm.SlurmEntrypointJob(str(failing), [], is_module=False)()


def test_documented_eval_entry_is_checked_against_the_eval_parser(capsys, monkeypatch):
    # The README / --help example: eval/knn.py's own options after `--`, checked before submission.
    monkeypatch.chdir(ROOT)
    documented = ["--backbone", "out/", "--train", "D/train", "--val", "D/val"]
    code, out, err = run_launcher(
        ["--entry", "eval/knn.py", "--gpus-per-node", "1", "--dry-run", "--", *documented], capsys
    )
    assert code == 0, err
    assert f"every task runs: python {ROOT / 'eval' / 'knn.py'} {' '.join(documented)}" in out
    # --checkpoint is accepted as the export CLI's name for the same thing.
    code, _, err = run_launcher(
        ["--entry", "eval/knn.py", "--dry-run", "--", "--checkpoint", "out/", "--train", "D", "--val", "D"], capsys
    )
    assert code == 0, err
    code, _, err = run_launcher(["--entry", "eval/knn.py", "--dry-run", "--", "--checkpoint", "out/"], capsys)
    assert code == 2 and "the following arguments are required: --train, --val" in err
    code, _, err = run_launcher(
        ["--module", "dinolite.commands.export", "--dry-run", "--", "--output", "x.onnx"], capsys
    )
    assert code == 2 and "for dinolite.commands.export" in err and "--checkpoint" in err
