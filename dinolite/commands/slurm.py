"""Submit dinolite training (or an evaluation entry point) to Slurm through submitit.

    dinolite-slurm --config vitl16 --nodes 4 --gpus-per-node 8 --partition gpu
    dinolite-slurm --config demo --gpus-per-node 0 --tasks-per-node 2 --time 30 train.max_iterations=20
    dinolite-slurm --config vitl16 --nodes 4 --gpus-per-node 8 --dry-run
    dinolite-slurm --config vitg14 --nodes 12 --gpus-per-node 8 --plan --gpu a100-80gb
    dinolite-slurm --module dinolite.commands.knn --gpus-per-node 1 -- --backbone out/ --train D/train --val D/val
    dinolite-slurm --module dinolite.commands.export --gpus-per-node 0 -- --checkpoint out/ --output b.safetensors

Training runs one task per GPU (``--gpus-per-node 0 --tasks-per-node T`` for CPU clusters), is requeued
on preemption / time limit after a checkpoint (``--max-requeues``), and resumes from the output dir.
Arguments after ``--`` go to the ``--entry`` / ``--module`` program; for dinolite's own entrypoints
(``dinolite.commands.*``, ``eval/*.py``, ``launch/*.py``) they are checked against that program's options before
anything is submitted, so a missing ``--backbone`` fails here and not in the queue.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections before a config is read)
from dinolite.checkpoint import CheckpointManager
from dinolite.cli import INPUT_ERRORS, HelpFormatter, refuse_dinov2_eval_flags, run_main
from dinolite.commands.plan import add_plan_arguments, run_plan
from dinolite.config import ConfigError, load_config, opt_ins, to_dict, to_yaml
from dinolite.extras import MissingExtraError
from dinolite.jobs.slurm_options import add_slurm_arguments, check_training_fits, resources_from_args
from dinolite.train.pretrained import resolve_pretrained_architecture
from dinolite.train.startup_notices import user_set_keys

try:  # submitit (the ``slurm`` extra) is needed to submit, not to print --help
    from dinolite.jobs import slurm, slurm_submit
except MissingExtraError as exc:
    slurm, slurm_submit, _MISSING_SUBMITIT = None, None, exc

# A source checkout's root (its eval/ and launch/ wrappers are checked like the modules they wrap).
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="Arguments after `--` are passed to the --entry/--module program.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config",
        "--config-file",
        dest="config",
        help="training config: a preset name (dinolite/configs/) or a .yaml path (DINOv2's files too)",
    )
    what.add_argument("--entry", help="a Python script to run on every task instead of training (e.g. eval/knn.py)")
    what.add_argument("--module", help="a Python module to run (python -m) on every task instead of training")
    add_slurm_arguments(parser)
    parser.add_argument(
        "--output-dir", "--output_dir", help="default: the config's train.output_dir; may contain %%j (job id)"
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="training starts at iteration 0 (DINOv2's flag): refused when the output dir already "
        "holds checkpoints (a requeued job still resumes from its own)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.base_lr=0.001")
    plan = parser.add_argument_group("planning (--plan: nothing is submitted; see dinolite-plan)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="plan the --config run on --nodes x --gpus-per-node GPUs (memory, collectives, step time) and exit",
    )
    add_plan_arguments(plan, with_layout=False)
    opt_ins.add_opt_in_arguments(parser)
    refuse_dinov2_eval_flags(parser)
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _check_program_arguments(target: str, argv: Sequence[str], is_module: bool) -> None:
    """Parse the passthrough arguments with a dinolite entrypoint's own parser (``build_parser``), so a
    wrong or missing option fails at submission. Other programs are not imported (that would run them)."""
    if is_module:
        if not target.startswith("dinolite."):
            return
        module = importlib.import_module(target)
    else:
        script = Path(target).resolve()  # a symlinked checkout (e.g. a scratch dir) is still ours
        if script.parent.parent != CHECKOUT_ROOT or script.parent.name not in ("eval", "launch"):
            return
        spec = importlib.util.spec_from_file_location(f"_dinolite_entry_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # our own entrypoint: only definitions at top level
    build = getattr(module, "build_parser", None)
    if build is None:
        if is_module:  # a dinolite library module runs nothing as __main__: the job would do nothing
            raise slurm_submit.SlurmLaunchError(
                f"--module {target!r} is not a dinolite command (it has no build_parser/main); the commands are "
                "dinolite.commands.<name> (train, knn, linear, segmentation, visualize, export, shards, info, lab)"
            )
        return
    program = build()

    def refuse(message: str) -> None:
        raise slurm_submit.SlurmLaunchError(f"arguments after `--` for {target}: {message}")

    program.error = refuse  # argparse would print usage and exit; we want one error: line
    program.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(_main, argv, errors=INPUT_ERRORS + (MissingExtraError,))


def _main(argv: Optional[Sequence[str]] = None) -> int:
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(own)  # key=value may come before and after options
    training = args.config is not None
    if training and passthrough:
        parser.error(
            f"arguments after `--` ({' '.join(passthrough)}) are only for --entry/--module; "
            "pass config overrides as key=value"
        )
    if not training and args.overrides:
        parser.error(f"key=value overrides {args.overrides} only apply to --config; put program arguments after `--`")
    if args.max_requeues < 0:
        parser.error(f"--max-requeues={args.max_requeues}: must be >= 0")
    if args.plan:
        if not training or args.gpus_per_node < 1:
            parser.error("--plan plans a training run on GPUs: it needs --config and --gpus-per-node >= 1")
        return run_plan(args, args.nodes, args.gpus_per_node)
    if slurm is None:
        raise _MISSING_SUBMITIT
    with opt_ins.from_args(args).applied() as grant:  # the job carries the grant: requeues read the config again
        return _submit(args, own, passthrough, grant)


def _submit(args: argparse.Namespace, own: Sequence[str], passthrough: list[str], grant: opt_ins.OptIns) -> int:
    training = args.config is not None
    try:
        if training:
            cfg = load_config(args.config, args.overrides)
            # the job trains the model the weights describe: its saved config must say so (as dinolite-train)
            cfg, read = resolve_pretrained_architecture(cfg, user_set_keys(args.config, args.overrides))
            for line in read:
                print(f"note: {line}", file=sys.stderr)
            output_dir = Path(args.output_dir or cfg.train.output_dir).expanduser().absolute()
            cfg.train.output_dir = str(output_dir)
            existing = CheckpointManager(output_dir).latest() if args.no_resume and "%" not in str(output_dir) else None
            if existing is not None:
                raise ValueError(
                    f"--no-resume: {output_dir} already holds checkpoints ({existing}); a fresh run "
                    "needs another --output-dir (nothing there is overwritten)"
                )
            job_name = args.job_name or f"dinolite-{Path(args.config).stem}"
            resources = resources_from_args(args, own, job_name)
            check_training_fits(cfg, resources)
            job = slurm.SlurmTrainingJob(
                config=to_dict(cfg), output_dir=str(output_dir), max_requeues=args.max_requeues, opt_ins=grant
            )
            summary = (
                f"# resolved config ({args.config}, overrides: {' '.join(args.overrides) or 'none'})\n{to_yaml(cfg)}"
            )
        else:
            target = args.module or args.entry
            if args.module:
                if importlib.util.find_spec(args.module) is None:
                    raise slurm_submit.SlurmLaunchError(f"--module {args.module!r}: no such module on this Python path")
            else:
                script = Path(args.entry).expanduser().absolute()
                if not script.is_file():
                    raise slurm_submit.SlurmLaunchError(f"--entry {args.entry!r}: no such file ({script})")
                target = str(script)
            output_dir = Path(args.output_dir or "./output/slurm/%j").expanduser().absolute()
            job_name = args.job_name or f"dinolite-{Path(target).stem.split('.')[-1]}"
            resources = resources_from_args(args, own, job_name)
            _check_program_arguments(target, passthrough, is_module=args.module is not None)
            job = slurm.SlurmEntrypointJob(
                target=target, argv=passthrough, is_module=args.module is not None, opt_ins=grant
            )
            kind = "python -m" if args.module else "python"
            summary = f"# every task runs: {kind} {target} {' '.join(passthrough)}".rstrip()
        log_dir = slurm_submit.log_dir_for(output_dir)
        source_root = Path(slurm_submit.__file__).resolve().parents[2]
        parameters = slurm_submit.sbatch_parameters(
            resources, setup=slurm_submit.job_setup_lines(resources, source_root)
        )
    except (ConfigError, slurm_submit.SlurmLaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.dry_run:
        nodes = f"{resources.nodes} node" + ("s" if resources.nodes > 1 else "")
        print(
            f"# sbatch script ({nodes} x {resources.ntasks_per_node} tasks = {resources.world_size} tasks; "
            f"logs in {log_dir})"
        )
        print(slurm_submit.render_sbatch_script(parameters, log_dir))
        print(summary)
        print(f"# dry run: nothing submitted; output dir {output_dir}")
        return 0

    log_dir.mkdir(parents=True, exist_ok=True)
    executor = slurm_submit.make_executor(log_dir, parameters, max_requeues=args.max_requeues)
    submitted = executor.submit(job)
    print(slurm_submit.describe_submission(submitted.job_id, log_dir, output_dir, resources.world_size), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
