"""``dinolite-shards``: write an image folder (or a list of image paths) as webdataset tar shards plus an
index JSON (:func:`dinolite.data.make_shards.make_shards`).

    dinolite-shards SRC OUT [--shard-size N] [--workers W] [--max-side PX]

Each sample is ``{key}.{jpg|png|webp|bmp}`` (the original encoded bytes, or a re-encode when
``--max-side`` shrinks it), ``{key}.cls`` (class index, when SRC has class subfolders or the list
gives classes) and ``{key}.json`` (source path and class name). Keys are the sample's running number,
so they are unique. Files that PIL cannot fully decode are skipped and reported. Each shard is written
to a hidden temp name and renamed when complete, and ``{prefix}-index.json`` is written last, so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional, Sequence

from dinolite.cli import make_parser, positive_int, run_main
from dinolite.data.make_shards import make_shards


def main(argv: Optional[Iterable[str]] = None) -> int:
    return run_main(_main, list(argv) if argv is not None else None)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("src", help="image folder (class subfolders become labels) or a text file of image paths")
    parser.add_argument("out", help="output folder for {prefix}-%%06d.tar shards and {prefix}-index.json")
    parser.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=positive_int, default=1, help="processes that read and verify images")
    parser.add_argument(
        "--max-side", type=positive_int, default=None, help="shrink images whose longer side exceeds PX"
    )
    parser.add_argument("--prefix", default="shard", help="shard file name prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards with the same prefix")
    return parser


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    index = make_shards(args.src, args.out, args.shard_size, args.workers, args.max_side, args.prefix, args.overwrite)
    print(
        f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {args.out} "
        f"({len(index['classes'])} classes)"
    )
    if index["skipped"]["count"]:
        print(f"skipped {index['skipped']['count']} unreadable files, first: " + "; ".join(index["skipped"]["first"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
