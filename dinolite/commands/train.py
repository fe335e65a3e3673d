"""Train one run: ``dinolite-train [--config NAME] [--output-dir DIR] [key=value ...]``.

The same command as ``python -m dinolite.commands.train`` and, from a clone, ``python launch/local.py``.

One process (CPU or one GPU), or one per GPU under ``torchrun`` (the distributed environment is read
from the variables torchrun/Slurm set). Re-running with the same output directory resumes from its
``latest`` checkpoint. With ``evaluation.knn_at_end`` (the demo) the main process then prints the kNN
accuracy of the trained teacher next to the raw-pixel and random-init baselines.

SIGTERM, SIGINT (Ctrl-C) and SIGUSR2 write a checkpoint at the next iteration on every rank; the run then
exits 0 with "run again to continue" (see :mod:`dinolite.jobs.stop_signals`).

Exit codes: 0 finished or stopped by a signal (run again to continue), 1 non-finite loss or bad input,
3 stopped by the collapse watchdog.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dinolite.checkpoint import CheckpointManager
from dinolite.cli import INPUT_ERRORS, make_parser, refuse_dinov2_eval_flags, run_main
from dinolite.compat import check_installed_versions
from dinolite.config import ConfigError, load_config, opt_ins, to_yaml
from dinolite.extras import MissingExtraError
from dinolite.jobs.training import EXIT_ERROR, EXIT_OK, run_training_job
from dinolite.train.preflight import check_startup
from dinolite.train.pretrained import resolve_pretrained_architecture
from dinolite.train.startup_notices import stale_arch_fields, user_set_keys


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument(
        "--config",
        "--config-file",
        dest="config",
        default="demo",
        help="preset name (dinolite/configs/) or a .yaml path; DINOv2's config files and key names "
        "are read too (docs/interop.md)",
    )
    parser.add_argument("--output-dir", "--output_dir", default=None, help="run directory (default: train.output_dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (same as train.progress=false)")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start from iteration 0 (DINOv2's flag); refused if the output dir already holds "
        "checkpoints, which are never overwritten",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every start-up check training runs (config, method, model shapes, pretrained weights) and "
        "print the config resolved; train nothing (no GPU or data needed)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.base_lr=0.002")
    opt_ins.add_opt_in_arguments(parser)
    refuse_dinov2_eval_flags(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_intermixed_args(argv)  # flags may come anywhere among the overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Bad input found while training (a data source, a file) is one error: line too, with exit code 1.
    return run_main(_main, argv, errors=INPUT_ERRORS + (MissingExtraError,), exit_code=EXIT_ERROR)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with opt_ins.from_args(args).applied():  # what the config may do: the user's flags, never the file's
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    check_installed_versions()  # a torchvision built for another torch: one error: line naming the fix
    try:
        overrides = list(args.overrides)
        if args.output_dir is not None:
            overrides.append(f"train.output_dir={args.output_dir}")
        if args.no_progress:
            overrides.append("train.progress=false")
        cfg = load_config(args.config, overrides)
        for line in stale_arch_fields(args.config, overrides, cfg):
            print(f"note: {line}", file=sys.stderr)
        cfg, read = resolve_pretrained_architecture(cfg, user_set_keys(args.config, overrides))
        for line in read:
            print(f"note: {line}", file=sys.stderr)
        check_startup(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    existing = CheckpointManager(cfg.train.output_dir).latest() if args.no_resume else None
    if existing is not None:
        print(
            f"error: --no-resume: {cfg.train.output_dir} already holds checkpoints ({existing}); a fresh run needs "
            "another --output-dir (nothing there is overwritten); without --no-resume the run resumes from it",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.dry_run:
        print(f"# resolved config ({args.config}, overrides: {' '.join(overrides) or 'none'})\n{to_yaml(cfg)}")
        print(f"# dry run: nothing trained; output dir {cfg.train.output_dir}")
        return EXIT_OK
    return run_training_job(cfg)


if __name__ == "__main__":
    sys.exit(main())
