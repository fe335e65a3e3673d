"""``dinolite-export --checkpoint DIR --output PATH [--format ...] [--with-heads] [--network NET] [--force]``
(also ``python -m dinolite.commands.export``).

Consolidates one network's backbone of a sharded training checkpoint in one process and writes it in the
chosen format: the method's evaluated network (its EMA teacher, or the student of a method without one;
the checkpoint's method record says which) unless --network teacher|student says otherwise. ``DIR`` is a run's output directory (its latest checkpoint is used) or
one checkpoint directory.

The format follows the suffix of --output (.safetensors: dinolite's layout with the record in the
header; .pth/.pt: DINOv2's layout; .onnx: ONNX); --format is needed only for timm and is checked
against the suffix. Existing files are never overwritten without --force. Each export writes its own
record NAME.<ext>.json beside the weights.

Folders for the HuggingFace Hub (docs/interop.md):

    dinolite-export --checkpoint out/ --format timm-hub --output vits-timm        # timm local-dir:/hf-hub:
    dinolite-export --checkpoint out/ --format transformers --output vits-hf \
        --push-to-hub ORG/NAME                                                    # Dinov2Model.from_pretrained
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dinolite.cli import INPUT_ERRORS, make_parser, run_main
from dinolite.export.consolidate import NETWORKS, consolidate_checkpoint
from dinolite.export.dinov3_writers import write_rope_backbone
from dinolite.export.errors import ExportWriteError
from dinolite.export.hub import (
    FOLDER_FORMATS,
    push_folder_to_hub,
    write_timm_hub_folder,
    write_transformers_folder,
)
from dinolite.export.load import PretrainedWeights, build_from_spec, load_state_dict_strict
from dinolite.export.staging import staged_output
from dinolite.export.writers import (
    FORMATS,
    output_paths,
    require_onnx,
    resolve_format,
    write_dinov2,
    write_onnx,
    write_safetensors,
    write_timm,
)
from dinolite.extras import MissingExtraError, optional_import

STUDENT_NETWORK = ""  # --student without a name: the raw student network (its meaning before multi-student runs)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="run output directory or one checkpoint directory")
    parser.add_argument(
        "--output",
        required=True,
        help="file to write (.safetensors, .pth, .onnx), or a folder for timm-hub / transformers",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the --output suffix (.safetensors, .pth/.pt -> dinov2, .onnx); "
        "timm-hub: timm.create_model('local-dir:DIR'); transformers: Dinov2Model.from_pretrained(DIR)",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        default=None,
        help="upload the timm-hub / transformers folder to this Hugging Face model repository "
        "(the `hub` extra; credentials from HF_TOKEN or `huggingface-cli login`)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument(
        "--with-heads",
        action="store_true",
        help="also write the method's heads (and its extra state, e.g. DINO's centres)",
    )
    parser.add_argument(
        "--network", choices=NETWORKS, default=None, help="which network (default: the method's evaluated one)"
    )
    parser.add_argument(
        "--student",
        metavar="NAME",
        nargs="?",
        const=STUDENT_NETWORK,
        default=None,
        help="with NAME: that student of a multi-student distillation run (its EMA unless --network student); "
        "alone: same as --network student",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A missing extra (onnx, hub) and a failed write (full or read-only disk) are one error: line too.
    return run_main(_main, argv, errors=INPUT_ERRORS + (MissingExtraError, ExportWriteError))


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.format = resolve_format(args.output, args.format)
    existing = [str(p) for p in output_paths(args.format, args.output, args.with_heads) if p.exists()]
    if existing and not args.force:
        raise FileExistsError(f"--output: {', '.join(existing)} already exist(s); pass --force to overwrite")
    if args.push_to_hub and args.format not in FOLDER_FORMATS:
        raise ValueError(
            f"--push-to-hub uploads a folder: use --format {' or '.join(FOLDER_FORMATS)}, not {args.format}"
        )
    if args.with_heads and args.format != "safetensors":
        raise ValueError(f"--with-heads is only supported with the safetensors format, not {args.format}")
    _require_extras(args)  # before minutes of consolidation, not after
    network = "student" if args.student == STUDENT_NETWORK else args.network
    student = None if args.student == STUDENT_NETWORK else args.student
    exported = consolidate_checkpoint(args.checkpoint, model=network, with_heads=args.with_heads, student=student)
    output = Path(args.output)
    with staged_output(output) as staged:  # all files or none (a full disk leaves no half export)
        written = _write(args.format, exported, staged, str(args.checkpoint))
    spec = exported.spec
    print(
        f"exported {spec.source} backbone ({spec.arch}, {spec.embed_dim}x{spec.depth}, patch {spec.patch_size}, "
        f"iteration {spec.iteration}) as {args.format}:"
    )
    for path in written:
        print(f"  {output.parent / path.relative_to(staged.parent)}")
    if args.push_to_hub:
        print(
            f"pushed to https://huggingface.co/{args.push_to_hub}: {push_folder_to_hub(output, args.push_to_hub, args.private)}"
        )
    return 0


def _require_extras(args: argparse.Namespace) -> None:
    if args.format == "onnx":
        require_onnx()
    if args.push_to_hub:
        optional_import("huggingface_hub", extra="hub", purpose="--push-to-hub")


def _write(fmt: str, exported: PretrainedWeights, output: Path, checkpoint: str) -> list[Path]:
    if exported.spec.position == "rope" and fmt not in ("safetensors", "onnx"):  # DINOv3's ViT: its layouts
        return write_rope_backbone(fmt, exported.backbone, exported.spec, output)
    if fmt == "safetensors":
        return write_safetensors(exported.backbone, exported.spec, output, heads=exported.heads)
    if fmt == "dinov2":
        return write_dinov2(exported.backbone, output)
    if fmt == "timm":
        return write_timm(exported.backbone, exported.spec, output)
    if fmt == "timm-hub":
        return write_timm_hub_folder(exported.backbone, exported.spec, output)
    if fmt == "transformers":
        return write_transformers_folder(exported.backbone, exported.spec, output)
    model = build_from_spec(exported.spec)
    load_state_dict_strict(model, exported.backbone, origin=checkpoint)
    return write_onnx(model.eval(), exported.spec, output)


if __name__ == "__main__":
    sys.exit(main())
