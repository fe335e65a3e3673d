"""``python -m dinolite.train.summary --config NAME [key=value ...]``: the model summary and the nominal
FLOPs of one training iteration of the configured method (``MethodSpec.training_flops``; the benchmark's
MFU uses the same numbers)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dinolite.config import ConfigError, load_config
from dinolite.models.info import format_summary, model_summary
from dinolite.train.methods import get_method


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dinolite.train.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="preset name or a .yaml path")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. student.arch=vit_small")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        method = get_method(cfg.train.method)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(model_summary(cfg), method.training_flops(cfg), method.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
