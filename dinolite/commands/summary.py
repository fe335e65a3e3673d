"""``python -m dinolite.commands.summary --config NAME [key=value ...]``: the model summary and the nominal
FLOPs of one training iteration of the configured method (``MethodSpec.training_flops``; the benchmark's
MFU uses the same numbers)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dinolite.cli import make_parser, run_main
from dinolite.config import load_config, opt_ins
from dinolite.models.info import format_summary, model_summary
from dinolite.train.methods import get_method


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m dinolite.commands.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="preset name or a .yaml path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. student.arch=vit_small")
    opt_ins.add_opt_in_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # flags may come anywhere among the overrides
    with opt_ins.from_args(args).applied():
        cfg = load_config(args.config, args.overrides)
    method = get_method(cfg.train.method)
    print(format_summary(model_summary(cfg), method.training_flops(cfg), method.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
