"""``python launch/local.py [--config NAME] [--output-dir DIR] [key=value ...]``: train one run.

One process (CPU or one GPU), or one per GPU under ``torchrun`` (the distributed environment is read
from the variables torchrun/Slurm set). Re-running with the same output directory resumes from its
``latest`` checkpoint. With ``evaluation.knn_at_end`` (the demo) the main process then prints the kNN
accuracy of the trained teacher next to the raw-pixel and random-init baselines.

Exit codes: 0 finished or preempted (run again to continue), 1 non-finite loss or bad input,
3 stopped by the collapse watchdog.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from dinolite.cli import make_parser, run_main
from dinolite.config import ConfigError, load_config
from dinolite.dist import destroy_distributed, init_distributed
from dinolite.eval.knn_report import format_report, knn_report
from dinolite.train.logging import get_console_logger
from dinolite.train.finite_check import NonFiniteStateError
from dinolite.train.loop import NonFiniteLossError, train

EXIT_OK, EXIT_ERROR, EXIT_COLLAPSE = 0, 1, 3


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "launch/local.py",
        description="Self-supervised pretraining (DINOv2 recipe) on this machine, single process or torchrun.",
    )
    parser.add_argument("--config", default="demo", help="preset name in configs/ or a .yaml path")
    parser.add_argument("--output-dir", default=None, help="run directory (default: train.output_dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.base_lr=0.002")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Bad input found while training (a data source, a file) is one error: line too, with exit code 1.
    return run_main(_main, argv, exit_code=EXIT_ERROR)


def _main(argv: Optional[Sequence[str]] = None) -> int:


    args = parse_args(argv)
    console = get_console_logger()
    try:
        overrides = list(args.overrides)
        if args.output_dir is not None:
            overrides.append(f"train.output_dir={args.output_dir}")
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    output_dir = Path(cfg.train.output_dir)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    env = init_distributed(cfg.distributed.backend, cfg.train.device)
    try:
        result = train(cfg, output_dir, env)
    except (NonFiniteLossError, NonFiniteStateError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        destroy_distributed()
    if result.status == "stopped":
        print(f"stopped: {result.message}", file=sys.stderr)
        return EXIT_COLLAPSE
    if env.rank == 0:
        console.info(f"{result.status} at iteration {result.iteration}; checkpoint {result.checkpoint_path}")
    if result.status == "finished" and cfg.evaluation.knn_at_end and env.rank == 0 and result.checkpoint_path:
        device = torch.device(env.device) if env.device else torch.device("cpu")
        results = knn_report(cfg, result.checkpoint_path, output_dir, device)
        console.info(format_report(results, cfg.evaluation.knn_k))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
