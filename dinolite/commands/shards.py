"""``dinolite-shards``: write an image folder (or a list of image paths) as webdataset tar shards plus an
index JSON (:func:`dinolite.data.make_shards.make_shards`).

    dinolite-shards SRC OUT [--shard-size N] [--workers W] [--max-side PX]
    dinolite-shards --dataset {digits,fashion_mnist} OUT [--shard-size N]

Each sample is ``{key}.{jpg|png|webp|bmp}`` (the original encoded bytes, or a re-encode when
``--max-side`` shrinks it), ``{key}.cls`` (class index, when SRC has class subfolders or the list
gives classes) and ``{key}.json`` (source path and class name). Keys are the sample's running number,
so they are unique. Files that PIL cannot fully decode are skipped and reported. Each shard is written
to a hidden temp name and renamed when complete, and ``{prefix}-index.json`` is written last, so an
interrupted run never leaves a half-written file under a final name.

``--dataset NAME`` writes a built-in development set instead (what ``data.source=[NAME]`` trains on):
its ``train`` and ``val`` shards under OUT (docs/data.md, "Built-in data sets").
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional, Sequence

from dinolite.cli import make_parser, positive_int, run_main
from dinolite.data.builtin_sets import BUILTIN_SETS, write_builtin_set
from dinolite.data.make_shards import make_shards


def main(argv: Optional[Iterable[str]] = None) -> int:
    return run_main(_main, list(argv) if argv is not None else None)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument(
        "src", nargs="?", help="image folder (class subfolders become labels) or a text file of image paths"
    )
    parser.add_argument("out", nargs="?", help="output folder for {prefix}-%%06d.tar shards and {prefix}-index.json")
    parser.add_argument(
        "--dataset",
        choices=sorted(BUILTIN_SETS),
        default=None,
        help="write this built-in data set (train and val shards) to the one folder given, instead of SRC",
    )
    parser.add_argument(
        "--shard-size", type=positive_int, default=None, help="samples per shard (default: 1000; --dataset: its own)"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="processes that read and verify images")
    parser.add_argument(
        "--max-side", type=positive_int, default=None, help="shrink images whose longer side exceeds PX"
    )
    parser.add_argument("--prefix", default="shard", help="shard file name prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards with the same prefix")
    return parser


def _write_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.src is None:
        parser.error(f"--dataset {args.dataset} needs the output folder, OUT")
    if args.out is not None:
        parser.error(f"--dataset {args.dataset} takes one folder, OUT, not SRC and OUT")
    if args.workers != 1 or args.max_side is not None or args.prefix != "shard" or args.overwrite:
        parser.error("--dataset takes --shard-size only (no --workers, --max-side, --prefix or --overwrite)")
    written = write_builtin_set(args.dataset, args.src, args.shard_size)
    print(f"{args.dataset} in {args.src}: train shards {written['train'][0]}, val shards {written['val'][0]}")
    return 0


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset is not None:
        return _write_dataset(parser, args)
    if args.out is None:
        parser.error("give SRC and OUT (or --dataset NAME OUT)")
    shard_size = args.shard_size or 1000
    index = make_shards(args.src, args.out, shard_size, args.workers, args.max_side, args.prefix, args.overwrite)
    print(
        f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {args.out} "
        f"({len(index['classes'])} classes)"
    )
    if index["skipped"]["count"]:
        print(f"skipped {index['skipped']['count']} unreadable files, first: " + "; ".join(index["skipped"]["first"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
