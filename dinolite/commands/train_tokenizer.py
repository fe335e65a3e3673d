"""``dinolite-train-tokenizer``: train BEiT's VQ-VAE tokenizer on a config's data (no pretrained tokenizer
can be downloaded here; docs/methods_masked.md, "BEiT").

    dinolite-train-tokenizer --config demo_beit [--output PATH] [key=value ...]

Reads ``beit.vocab_size`` / ``beit.tokenizer_*``, ``student.patch_size``, ``crops.*``, ``data.source`` and
``train.seed`` / ``train.batch_size_per_gpu``; writes the tokenizer to ``--output`` (default:
``beit.tokenizer``), the file ``train.method: beit`` then reads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional

from dinolite.cli import check_output_path, make_parser, run_main
from dinolite.config import ConfigError, load_config
from dinolite.train.methods import get_method
from dinolite.train.tokenizer import train_tokenizer


def main(argv: Optional[Iterable[str]] = None) -> int:
    return run_main(_main, list(argv) if argv is not None else None)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("--config", default="demo_beit", help="preset name or YAML path (train.method: beit)")
    parser.add_argument("--output", default=None, help="tokenizer .safetensors to write (default: beit.tokenizer)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser


def _main(argv: Optional[list[str]]) -> int:
    args = build_parser().parse_args(argv)
    get_method("beit")  # the registry is imported: the config's beit section is typed and validated
    cfg = load_config(args.config, args.overrides)
    if cfg.train.method != "beit":
        raise ConfigError(f"invalid value for 'train.method': {cfg.train.method!r}; the tokenizer is BEiT's ('beit')")
    output = args.output or cfg.beit.tokenizer
    if not output or output == "random":
        raise ConfigError("missing value for 'beit.tokenizer' (or --output): where to write the tokenizer")
    check_output_path(output, "--output")
    train_tokenizer(cfg, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
