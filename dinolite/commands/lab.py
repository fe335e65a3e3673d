"""``python launch/lab.py --matrix seeds [--slurm ...]`` (or ``dinolite-lab``): run a collapse-lab matrix.

Locally the runs train one after another in this process, then the report is written to
``<output_dir>/report/README.md``. With ``--slurm`` (and the options of ``launch/slurm.py``) the runs
that are not finished yet are submitted as one Slurm job array, one array task per run; the last task to
finish writes the report. Run the same command again to skip finished runs and resume interrupted ones;
``--report`` only (re)writes the report from what is on disk. ``--data SET`` runs the matrix on another
built-in set (its runs in ``<output_dir>-SET``); ``--choose DIR DIR`` picks a recipe from the matrix's runs
on two sets (dinolite/lab/choose.py, docs/recipes.md).

SIGTERM, SIGINT (Ctrl-C) and SIGUSR2 stop a local lab as they stop training: the run in progress is
checkpointed at its next iteration (or its evaluation ends, to be redone), the lab says that the same
command resumes, and exits 0.

Exit codes: 0 done, submitted or stopped by a signal (run again to continue), 2 bad matrix file or
options (one ``error:`` line naming the file, key and value) or a run folder in use by another process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dinolite.cli import INPUT_ERRORS, make_parser, positive_int, run_main
from dinolite.config import ConfigError, opt_ins
from dinolite.extras import MissingExtraError
from dinolite.jobs.run_lock import RunLockError
from dinolite.jobs.slurm_options import SLURM_OPTIONS, add_slurm_arguments
from dinolite.jobs.stop_signals import StopFlag
from dinolite.lab.choose import choose, read_set, render_choice
from dinolite.lab.matrix_plan import plan_matrix
from dinolite.lab.report import write_report
from dinolite.lab.report_figures import require_matplotlib
from dinolite.lab.runner import run_local

try:  # submitit (the ``slurm`` extra) is needed for --slurm only
    from dinolite.lab import slurm_array
except MissingExtraError as exc:
    slurm_array, _MISSING_SUBMITIT = None, exc

EXIT_OK = 0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)  # prog: the name it was started by
    parser.add_argument(
        "--matrix",
        required=True,
        help="a matrix file, or the name of one in dinolite/configs/lab/ (seeds, dino_fig7, vitb16)",
    )
    parser.add_argument(
        "--output-dir", help="default: the matrix's output_dir (<output_dir>-<set> with --data of another set)"
    )
    parser.add_argument(
        "--data",
        metavar="SET",
        help="train and evaluate every run on this built-in data set (digits, fashion_mnist) instead of the matrix's",
    )
    parser.add_argument(
        "--choose",
        nargs="+",
        metavar="[NAME=]DIR",
        help="choose a recipe from this matrix's runs on two or more sets (their output folders; "
        "docs/recipes.md: the largest smallest gain over random init); trains nothing",
    )
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these runs of the matrix")
    parser.add_argument("--report", action="store_true", help="only write the report from the runs on disk")
    parser.add_argument("--slurm", action="store_true", help="submit the unfinished runs as one Slurm job array")
    parser.add_argument(
        "--array-parallelism", type=positive_int, default=256, help="array tasks running at once (--slurm)"
    )
    add_slurm_arguments(parser)
    opt_ins.add_opt_in_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv, errors=INPUT_ERRORS + (MissingExtraError, RunLockError))


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    refused = given & (SLURM_OPTIONS | {"--array-parallelism"})
    if not args.slurm and refused:
        parser.error(f"{', '.join(sorted(refused))} only apply with --slurm")
    if args.choose is not None:
        alone = given & {"--slurm", "--report", "--only", "--data", "--output-dir"}
        if alone:
            parser.error(f"--choose reads finished runs; it takes no {', '.join(sorted(alone))}")
        return _choose(args.matrix, args.choose)
    require_matplotlib()
    with opt_ins.from_args(args).applied() as grant:  # what the matrix and presets may do: the user's flags
        return _run(args, argv, grant)


def _run(args: argparse.Namespace, argv: list[str], grant: opt_ins.OptIns) -> int:
    plan = plan_matrix(args.matrix, args.output_dir, prepare=not args.dry_run, data=args.data)
    selected = [r.label for r in plan.select(args.only)]
    if args.report:
        print(f"report: {write_report(plan)}")
        return EXIT_OK
    if args.slurm:
        if slurm_array is None:
            raise _MISSING_SUBMITIT
        return slurm_array.submit(plan, selected, args, argv, grant)
    stop = StopFlag(prefix="[lab]")
    with stop.installed():  # as dinolite-train: checkpoint the run in progress, say "run again", exit 0
        page = run_local(plan, selected, stop=stop)
    if page is not None:
        print(f"report: {page}")
    return EXIT_OK


def _choose(matrix: str, folders: list[str]) -> int:
    sets = []
    for item in folders:
        name, _, folder = item.rpartition("=")
        plan = plan_matrix(matrix, folder, prepare=False)
        if not plan.output_dir.is_dir():
            raise ConfigError(f"--choose {item}: no folder {plan.output_dir}")
        sets.append(read_set(plan, name or None))
    print(render_choice(choose([r.label for r in plan.runs], sets)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
