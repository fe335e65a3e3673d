"""The lab on Slurm: the unfinished runs of a matrix as one job array, one array task per run.

Each task trains its run through :class:`dinolite.jobs.slurm.SlurmTrainingJob` (the same job as
``launch/slurm.py``: USR2 -> checkpoint -> ``scontrol requeue`` -> resume), evaluates it from its
checkpoints and writes ``lab_result.json``; the last task to finish writes the report (each task writes
its result before looking at the others, so whichever finishes last sees them all).
"""

from __future__ import annotations

import argparse
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinolite.config import OptIns, to_dict
from dinolite.jobs import slurm, slurm_submit
from dinolite.jobs.slurm_options import check_training_fits, resources_from_args
from dinolite.lab.matrix_plan import LabPlan
from dinolite.lab.report import write_report
from dinolite.lab.runner import check_run_dir, finish_run, is_done, iteration_of
from dinolite.lab.traces import write_result
from dinolite.train.step import NonFiniteLossError


@dataclass
class LabArrayTask(slurm.Checkpointable):
    """One array task: train one run of the matrix (through :class:`SlurmTrainingJob`: preemption ->
    checkpoint -> requeue -> resume), evaluate it, and write the report once every run is done.

    The plan is pickled at submission, so the job trains exactly what was planned and validated, even if
    the matrix file changes meanwhile.
    """

    plan: LabPlan
    label: str
    max_requeues: int = 10
    opt_ins: OptIns = field(default_factory=OptIns)  # the user's grant at submission (the task reads configs)

    def __call__(self) -> Any:
        with self.opt_ins.applied():
            return self._run()

    def _run(self) -> Any:
        run = next(r for r in self.plan.runs if r.label == self.label)
        job = slurm.SlurmTrainingJob(
            config=to_dict(run.config),
            output_dir=str(run.run_dir),
            max_requeues=self.max_requeues,
            opt_ins=self.opt_ins,
        )
        try:
            result = job.run(os.environ)  # raises SystemExit when the job was requeued
            status, iteration, message = result.status, result.iteration, result.message
        except NonFiniteLossError as exc:
            status, iteration, message = "diverged", iteration_of(str(exc)), str(exc)
        if int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return status
        try:
            finish_run(self.plan, run, status, iteration, message)
        except Exception:  # evaluation failed: record it so the report says so, then fail the task
            write_result(
                run.run_dir,
                {
                    "label": run.label,
                    "status": "failed",
                    "iteration": iteration,
                    "message": traceback.format_exc(limit=3),
                },
            )
            raise
        # Each task writes its result before looking at the others, so the last one to finish sees all.
        if all(is_done(r) for r in self.plan.runs):
            write_report(self.plan)
        return status


def submit(
    plan: LabPlan, labels: list[str], args: argparse.Namespace, argv: list[str], opt_ins: OptIns | None = None
) -> int:
    """Submit the unfinished runs among ``labels`` as one job array (or print its script: ``--dry-run``)."""
    if args.array_parallelism < 1:
        raise slurm_submit.SlurmLaunchError(f"--array-parallelism={args.array_parallelism}: must be >= 1")
    if args.max_requeues < 0:
        raise slurm_submit.SlurmLaunchError(f"--max-requeues={args.max_requeues}: must be >= 0")
    resources = resources_from_args(args, argv, args.job_name or f"dinolite-lab-{plan.matrix.name}")
    runs = [r for r in plan.runs if r.label in labels]
    for run in runs:
        check_training_fits(run.config, resources)
        check_run_dir(run)
    pending = [r for r in runs if not is_done(r)]
    log_dir = slurm_submit.log_dir_for(plan.output_dir)
    source_root = Path(slurm_submit.__file__).resolve().parents[2]
    parameters = slurm_submit.sbatch_parameters(resources, setup=slurm_submit.job_setup_lines(resources, source_root))
    parameters["array_parallelism"] = args.array_parallelism
    skipped = [r.label for r in runs if r not in pending]
    if skipped:
        print(f"finished earlier, not submitted: {', '.join(skipped)}")
    if not pending:
        print(f"every run is finished; report: {write_report(plan)}")
        return 0
    if args.dry_run:
        script = slurm_submit.render_sbatch_script({**parameters, "map_count": len(pending)}, log_dir)
        print(f"# sbatch script: a {len(pending)}-task array, each {resources.world_size} task(s); logs in {log_dir}")
        print(script)
        for run in pending:
            print(f"# array task: {run.label}: {' '.join([run.spec.preset, *run.spec.overrides])} -> {run.run_dir}")
        print("# dry run: nothing submitted")
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    executor = slurm_submit.make_executor(log_dir, parameters, max_requeues=args.max_requeues)
    with executor.batch():
        jobs = [
            executor.submit(LabArrayTask(plan, run.label, args.max_requeues, opt_ins or OptIns())) for run in pending
        ]
    for run, job in zip(pending, jobs):
        print(f"submitted {job.job_id}: {run.label} -> {run.run_dir}")
    print(f"logs: {log_dir}; the last task to finish writes {plan.report_dir / 'README.md'}", flush=True)
    return 0
