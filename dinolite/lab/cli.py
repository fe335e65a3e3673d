"""``python launch/lab.py --matrix configs/lab/seeds.yaml [--slurm ...]``: run a collapse-lab matrix.

Locally the runs train one after another in this process, then the report is written to
``<output_dir>/report/README.md``. With ``--slurm`` (and the options of ``launch/slurm.py``) the runs
that are not finished yet are submitted as one Slurm job array, one array task per run; the last task to
finish writes the report. Run the same command again to skip finished runs and resume interrupted ones;
``--report`` only (re)writes the report from what is on disk.

Exit codes: 0 done (or submitted), 1 a run could not train, 2 bad matrix file or options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from dinolite.config import ConfigError
from dinolite.lab.matrix import plan_matrix
from dinolite.lab.report import write_report
from dinolite.lab.runner import LabArrayTask, check_run_dir, is_done, run_local
from dinolite.train import slurm

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch/lab.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", required=True, help="a matrix file, e.g. configs/lab/seeds.yaml")
    parser.add_argument("--output-dir", help="default: the matrix's output_dir")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these runs of the matrix")
    parser.add_argument("--report", action="store_true", help="only write the report from the runs on disk")
    parser.add_argument("--slurm", action="store_true", help="submit the unfinished runs as one Slurm job array")
    parser.add_argument("--array-parallelism", type=int, default=256, help="array tasks running at once (--slurm)")
    slurm.add_slurm_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    slurm_only = {"--nodes", "--gpus-per-node", "--tasks-per-node", "--cpus-per-task", "--mem-gb", "--time",
                  "--partition", "--account", "--qos", "--constraint", "--exclude", "--comment", "--job-name",
                  "--signal-delay-s", "--max-requeues", "--dry-run", "--array-parallelism"}
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if not args.slurm and given & slurm_only:
        parser.error(f"{', '.join(sorted(given & slurm_only))} only apply with --slurm")
    try:
        plan = plan_matrix(args.matrix, args.output_dir, prepare=not args.dry_run)
        selected = plan.select(args.only)
        if args.report:
            print(f"report: {write_report(plan)}")
            return EXIT_OK
        if args.slurm:
            return submit(plan, [r.label for r in selected], args, argv)
        page = run_local(plan, [r.label for r in selected])
    except (ConfigError, slurm.SlurmLaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if page is not None:
        print(f"report: {page}")
    return EXIT_OK


def submit(plan, labels: list[str], args: argparse.Namespace, argv: list[str]) -> int:
    """Submit the unfinished runs among ``labels`` as one job array (or print its script: ``--dry-run``)."""
    if args.array_parallelism < 1:
        raise slurm.SlurmLaunchError(f"--array-parallelism={args.array_parallelism}: must be >= 1")
    resources = slurm.resources_from_args(args, argv, args.job_name or f"dinolite-lab-{plan.matrix.name}")
    runs = [r for r in plan.runs if r.label in labels]
    for run in runs:
        slurm.check_training_fits(run.config, resources)
        check_run_dir(run)
    pending = [r for r in runs if not is_done(r)]
    log_dir = slurm.log_dir_for(plan.output_dir)
    source_root = Path(slurm.__file__).resolve().parents[2]
    parameters = slurm.sbatch_parameters(resources, setup=slurm.job_setup_lines(resources, source_root))
    parameters["array_parallelism"] = args.array_parallelism
    skipped = [r.label for r in runs if r not in pending]
    if skipped:
        print(f"finished earlier, not submitted: {', '.join(skipped)}")
    if not pending:
        print(f"every run is finished; report: {write_report(plan)}")
        return EXIT_OK
    if args.dry_run:
        script = slurm.render_sbatch_script({**parameters, "map_count": len(pending)}, log_dir)
        print(f"# sbatch script: a {len(pending)}-task array, each {resources.world_size} task(s); logs in {log_dir}")
        print(script)
        for run in pending:
            print(f"# array task: {run.label}: {' '.join([run.spec.preset, *run.spec.overrides])} -> {run.run_dir}")
        print("# dry run: nothing submitted")
        return EXIT_OK
    log_dir.mkdir(parents=True, exist_ok=True)
    executor = slurm.make_executor(log_dir, parameters, max_requeues=args.max_requeues)
    with executor.batch():
        jobs = [executor.submit(LabArrayTask(plan, run.label, args.max_requeues)) for run in pending]
    for run, job in zip(pending, jobs):
        print(f"submitted {job.job_id}: {run.label} -> {run.run_dir}")
    print(f"logs: {log_dir}; the last task to finish writes {plan.report_dir / 'README.md'}", flush=True)
    return EXIT_OK
