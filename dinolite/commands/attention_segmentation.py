"""CLS attention as object segmentation (DINO's Fig. 4 protocol), scored against the object mask.

The command line of ``dinolite-attention-segmentation``; ``python -m dinolite.commands.attention_segmentation``
and, from a clone, ``python eval/attention_segmentation.py`` run the same :func:`main`.

    dinolite-attention-segmentation --backbone output/demo --data output/demo/data/val --output attnseg/

Per head of the last block, the patches holding the top 60 % of the CLS attention are kept and compared
with the object mask (the non-background pixels at the patch grid) by the Jaccard index; the trained
backbone is measured beside the same architecture at random init. Writes ``attention_segmentation.json``
and, per network (``trained``, ``random_init``), ``<network>_masks.png`` (kept patches against the object)
and ``<network>_attention.png`` (the attention maps). A backbone without a CLS token is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from dinolite.cli import bounded, make_parser, non_negative_int, positive_int, probability, seed_int
from dinolite.commands.eval_common import (
    add_backbone_args,
    add_normalisation_args,
    backbone_inputs,
    check_outputs,
    format_table,
    run_eval_main,
    single_process_device,
)
from dinolite.eval.attention_segmentation import (
    INK_THRESHOLD,
    MASS_KEPT,
    MIN_OBJECT_FRACTION,
    Examples,
    HeadJaccards,
    MaskProtocol,
    image_batches,
    measure_attention_jaccard,
    random_init_like,
    require_cls_token,
)
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.datasets import check_source
from dinolite.eval.visualize_figures import save_attention_grid, save_attention_mask_grid
from dinolite.io import write_json_atomic

RESULTS_FILE = "attention_segmentation.json"
fraction = bounded(float, 0.0, 1.0, exclusive_minimum=True, name="fraction")  # (0, 1]: 0 keeps nothing


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__)
    add_backbone_args(parser)
    parser.add_argument("--data", nargs="+", required=True, help="image folder or shards (black background)")
    parser.add_argument("--output", required=True, help="directory for the JSON results and the figures")
    parser.add_argument("--size", type=positive_int, default=None, help="square input size (default: training crop)")
    parser.add_argument("--max-images", type=positive_int, default=500, help="the first N images of --data")
    parser.add_argument("--mass", type=fraction, default=MASS_KEPT, help="attention mass kept per head")
    parser.add_argument(
        "--ink-threshold",
        type=probability,
        default=INK_THRESHOLD,
        help="grey value in [0, 1] above which a pixel is object",
    )
    parser.add_argument(
        "--min-object-fraction",
        type=fraction,
        default=MIN_OBJECT_FRACTION,
        help="a patch is object when at least this fraction of its pixels are",
    )
    parser.add_argument("--random-init-seed", type=seed_int, default=0, help="seed of the random-init baseline")
    parser.add_argument("--no-random-init", action="store_true", help="skip the random-init baseline")
    parser.add_argument("--grid-images", type=non_negative_int, default=8, help="images drawn in each figure (0: none)")
    parser.add_argument(
        "--grid-stride",
        type=positive_int,
        default=37,
        help="draw every N-th image (a class-sorted folder shows several classes)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_normalisation_args(parser, "the backbone's")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_eval_main(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs(args, output_is_directory=True)
    check_source(args.data, "--data")
    protocol = MaskProtocol(args.mass, args.ink_threshold, args.min_object_fraction)
    device = single_process_device(args.device)
    model = load_any_backbone(args.backbone, map_location=device, network=args.network, student=args.student)
    require_cls_token(model, f"--backbone {args.backbone}")
    size, mean, std = backbone_inputs(model, args.size, args.mean, args.std)
    if size % int(model.patch_size):
        raise ValueError(f"--size {size} is not a multiple of the backbone's patch size {model.patch_size}")
    networks = {"trained": model}
    if not args.no_random_init:
        networks["random_init"] = random_init_like(model, args.random_init_seed).to(device)
    output = Path(args.output)
    results: dict = {
        "backbone": str(args.backbone),
        "data": list(args.data),
        "size": size,
        "protocol": {**vars(protocol), "random_init_seed": None if args.no_random_init else args.random_init_seed},
    }
    measured: dict[str, HeadJaccards] = {}
    for name, network in networks.items():
        batches = image_batches(args.data, size, args.batch_size, args.max_images)
        scores, shown = measure_attention_jaccard(
            network,
            batches,
            mean,
            std,
            protocol,
            device=device,
            examples=args.grid_images,
            example_stride=args.grid_stride,
        )
        results[name], measured[name] = scores.to_dict(), scores
        if shown.pixels:
            _draw(output, name, shown, scores)
    _print(measured)
    write_json_atomic(output / RESULTS_FILE, results)
    print(f"wrote {output / RESULTS_FILE}" + (" and the figures beside it" if args.grid_images else ""))
    return 0


def _draw(output: Path, name: str, shown: Examples, scores: HeadJaccards) -> None:
    pixels = torch.stack(shown.pixels)
    title = f"{name}: kept = top {100 * MASS_KEPT:.0f}% of each head's CLS attention; best head {scores.best_head}"
    save_attention_mask_grid(
        pixels,
        torch.stack(shown.objects),
        torch.stack(shown.kept),
        torch.stack(shown.jaccard),
        output / f"{name}_masks.png",
        title,
    )
    save_attention_grid(pixels, torch.stack(shown.attention), output / f"{name}_attention.png")


def _head_row(scores: HeadJaccards, head: int) -> tuple[float, float, float]:
    return scores.per_head[head], scores.per_head_kept_share[head], scores.per_head_precision[head]


def _print(scores: dict[str, HeadJaccards]) -> None:
    names = list(scores)
    heads = len(next(iter(scores.values())).per_head)
    columns = [f"{n} {what} %" for n in names for what in ("J", "kept", "precision")]
    rows = [(head, *(v for n in names for v in _head_row(scores[n], head))) for head in range(heads)]
    print(format_table(("head", *columns), rows))
    for name, s in scores.items():
        print(
            f"{name}: best head {s.best_head} J {s.best:.2f}%, mean over heads {s.mean:.2f}% ({s.num_images} images"
            + (f", {s.skipped_without_object} without object skipped" if s.skipped_without_object else "")
            + ")"
        )
    s = next(iter(scores.values()))
    print(
        f"references without a network: every patch {s.every_patch:.2f}%, brightest patches {s.brightest_patches:.2f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
