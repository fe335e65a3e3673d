"""``dinolite-info [--config NAME] [key=value ...]``: parameter counts and forward FLOPs of a configured
model (:mod:`dinolite.models.info`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections before a config is read)
from dinolite.cli import INPUT_ERRORS, make_parser, run_main
from dinolite.config import load_config, opt_ins
from dinolite.extras import MissingExtraError
from dinolite.models.info import format_summary, model_summary
from dinolite.train.startup_notices import stale_arch_fields


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv, errors=INPUT_ERRORS + (MissingExtraError,))


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        description="Parameter counts and forward FLOPs of a configured model (dinolite-info, python -m "
        "dinolite.commands.info; training FLOPs per iteration: python -m dinolite.commands.summary)."
    )
    parser.add_argument("--config", default="demo", help="preset name (dinolite/configs/) or a .yaml path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. student.arch=vit_small")
    opt_ins.add_opt_in_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # flags may come anywhere among the overrides
    with opt_ins.from_args(args).applied():
        cfg = load_config(args.config, args.overrides)
    for line in stale_arch_fields(args.config, args.overrides, cfg):
        print(f"note: {line}", file=sys.stderr)
    print(format_summary(model_summary(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
