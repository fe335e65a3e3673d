#!/usr/bin/env python
"""Submit dinolite training (or an evaluation entry point) to Slurm through submitit.

    python launch/slurm.py --config vitl16 --nodes 4 --gpus-per-node 8 --partition gpu
    python launch/slurm.py --config demo --gpus-per-node 0 --tasks-per-node 2 --time 30 train.max_iterations=20
    python launch/slurm.py --config vitl16 --nodes 4 --gpus-per-node 8 --dry-run
    python launch/slurm.py --entry eval/knn.py --gpus-per-node 1 -- --checkpoint out/ ...
    python launch/slurm.py --module dinolite.export --gpus-per-node 0 -- --checkpoint out/ --output b.st

Training runs one task per GPU (``--gpus-per-node 0 --tasks-per-node T`` for CPU clusters), is requeued
on preemption / time limit after a checkpoint (``--max-requeues``), and resumes from the output dir.
Arguments after ``--`` go to the ``--entry`` / ``--module`` program.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout: import the package next to it
    sys.path.insert(0, str(ROOT))

from dinolite.config import ConfigError, load_config, to_dict, to_yaml  # noqa: E402
from dinolite.train import slurm  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/slurm.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` are passed to the --entry/--module program.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="training config: a preset name in configs/ or a .yaml path")
    what.add_argument("--entry", help="a Python script to run on every task instead of training (e.g. eval/knn.py)")
    what.add_argument("--module", help="a Python module to run (python -m) on every task instead of training")
    slurm.add_slurm_arguments(parser)
    parser.add_argument("--output-dir", help="default: the config's train.output_dir; may contain %%j (job id)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.base_lr=0.001")
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(own)  # key=value may come before and after options
    training = args.config is not None
    if training and passthrough:
        parser.error(f"arguments after `--` ({' '.join(passthrough)}) are only for --entry/--module; "
                     "pass config overrides as key=value")
    if not training and args.overrides:
        parser.error(f"key=value overrides {args.overrides} only apply to --config; put program arguments after `--`")
    if args.max_requeues < 0:
        parser.error(f"--max-requeues={args.max_requeues}: must be >= 0")

    try:
        if training:
            cfg = load_config(args.config, args.overrides)
            output_dir = Path(args.output_dir or cfg.train.output_dir).expanduser().absolute()
            cfg.train.output_dir = str(output_dir)
            job_name = args.job_name or f"dinolite-{Path(args.config).stem}"
            resources = slurm.resources_from_args(args, own, job_name)
            slurm.check_training_fits(cfg, resources)
            job = slurm.SlurmTrainingJob(config=to_dict(cfg), output_dir=str(output_dir), max_requeues=args.max_requeues)
            summary = f"# resolved config ({args.config}, overrides: {' '.join(args.overrides) or 'none'})\n{to_yaml(cfg)}"
        else:
            target = args.module or args.entry
            if args.module:
                if importlib.util.find_spec(args.module) is None:
                    raise slurm.SlurmLaunchError(f"--module {args.module!r}: no such module on this Python path")
            else:
                script = Path(args.entry).expanduser().absolute()
                if not script.is_file():
                    raise slurm.SlurmLaunchError(f"--entry {args.entry!r}: no such file ({script})")
                target = str(script)
            output_dir = Path(args.output_dir or "./output/slurm/%j").expanduser().absolute()
            job_name = args.job_name or f"dinolite-{Path(target).stem.split('.')[-1]}"
            resources = slurm.resources_from_args(args, own, job_name)
            job = slurm.SlurmEntrypointJob(target=target, argv=passthrough, is_module=args.module is not None)
            kind = "python -m" if args.module else "python"
            summary = f"# every task runs: {kind} {target} {' '.join(passthrough)}".rstrip()
        log_dir = slurm.log_dir_for(output_dir)
        source_root = Path(slurm.__file__).resolve().parents[2]
        parameters = slurm.sbatch_parameters(resources, setup=slurm.job_setup_lines(resources, source_root))
    except (ConfigError, slurm.SlurmLaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.dry_run:
        nodes = f"{resources.nodes} node" + ("s" if resources.nodes > 1 else "")
        print(f"# sbatch script ({nodes} x {resources.ntasks_per_node} tasks = {resources.world_size} tasks; "
              f"logs in {log_dir})")
        print(slurm.render_sbatch_script(parameters, log_dir))
        print(summary)
        print(f"# dry run: nothing submitted; output dir {output_dir}")
        return 0

    log_dir.mkdir(parents=True, exist_ok=True)
    executor = slurm.make_executor(log_dir, parameters, max_requeues=args.max_requeues)
    submitted = executor.submit(job)
    print(slurm.describe_submission(submitted.job_id, log_dir, output_dir, resources.world_size), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
