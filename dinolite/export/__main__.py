"""``python -m dinolite.export --checkpoint DIR --output PATH [--format ...] [--with-heads] [--student]``.

Consolidates the teacher (or student) backbone of a sharded training checkpoint in one process and
writes it in the chosen format. ``DIR`` is a run's output directory (its latest checkpoint is used) or
one checkpoint directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from dinolite.export.consolidate import consolidate_checkpoint
from dinolite.export.load import build_from_spec, load_state_dict_strict
from dinolite.export.writers import (
    FORMATS,
    write_dinov2,
    write_onnx,
    write_safetensors,
    write_timm,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dinolite.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run output directory or one checkpoint directory")
    parser.add_argument("--output", required=True, help="file to write (.safetensors, .pth, .onnx)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument("--with-heads", action="store_true", help="also write DINO/iBOT heads and centering state")
    parser.add_argument("--student", action="store_true", help="export the student instead of the teacher")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    if args.with_heads and args.format != "safetensors":
        print("error: --with-heads is only supported with --format safetensors", file=sys.stderr)
        return 2
    try:
        exported = consolidate_checkpoint(
            args.checkpoint, model="student" if args.student else "teacher", with_heads=args.with_heads
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output)
    if args.format == "safetensors":
        written = write_safetensors(exported.backbone, exported.spec, output, heads=exported.heads)
    elif args.format == "dinov2":
        written = write_dinov2(exported.backbone, output)
    elif args.format == "timm":
        written = write_timm(exported.backbone, exported.spec, output)
    else:

        model = build_from_spec(exported.spec)
        load_state_dict_strict(model, exported.backbone, origin=str(args.checkpoint))
        written = write_onnx(model.eval(), exported.spec, output)
    spec = exported.spec
    print(
        f"exported {spec.source} backbone ({spec.arch}, {spec.embed_dim}x{spec.depth}, patch {spec.patch_size}, "
        f"iteration {spec.iteration}) as {args.format}:"
    )
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
