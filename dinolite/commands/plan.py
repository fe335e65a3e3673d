"""``dinolite-plan --config NAME --nodes N --gpus-per-node G --gpu KIND [key=value ...]``: plan a cluster run
before submitting it: per-GPU peak memory by category, collectives per step, FLOPs per image, predicted
step time, img/s and MFU, whether it fits and what to change (:mod:`dinolite.plan`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections before a config is read)
from dinolite.cli import INPUT_ERRORS, bounded, make_parser, positive_float, positive_int, run_main
from dinolite.config import load_config, opt_ins
from dinolite.plan.estimate import DEFAULT_EFFICIENCY, DEFAULT_USABLE
from dinolite.plan.hardware import GPUS, get_gpu


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv, errors=INPUT_ERRORS)


FRACTION = bounded(float, 0.0, 1.0, exclusive_minimum=True, name="fraction")  # (0, 1]


def add_plan_arguments(parser: argparse.ArgumentParser, *, with_layout: bool = True) -> None:
    """The planner's options (``dinolite-slurm --plan`` adds them without --nodes / --gpus-per-node, which
    it has already)."""
    if with_layout:
        parser.add_argument("--nodes", type=positive_int, default=1, help="nodes of the planned run")
        parser.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs (processes) per node")
    parser.add_argument("--gpu", default="a100-80gb", help=f"the GPU: {', '.join(GPUS)}")
    parser.add_argument(
        "--efficiency",
        type=FRACTION,
        default=DEFAULT_EFFICIENCY,
        help="achieved fraction of the datasheet peak assumed for compute",
    )
    parser.add_argument(
        "--usable", type=FRACTION, default=DEFAULT_USABLE, help="fraction of the GPU memory the step may use"
    )
    parser.add_argument(
        "--network-gbs", type=positive_float, help="inter-node GB/s per GPU (default: the GPU's reference)"
    )
    parser.add_argument(
        "--full-depth", action="store_true", help="run every block instead of extrapolating from two depths"
    )
    parser.add_argument("--verbose", action="store_true", help="also FLOPs by op and the host reads answered")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--config", default="demo", help="preset name (dinolite/configs/) or a .yaml path")
    add_plan_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size_per_gpu=16")
    opt_ins.add_opt_in_arguments(parser)
    return parser


def run_plan(args: argparse.Namespace, nodes: int, gpus_per_node: int) -> int:
    """Load the config, plan, print; 0 when the run fits, 3 when it does not."""
    import torch  # here, as the next import: dinolite-slurm imports this module for its --plan options

    # the planner pulls in torch's fake process group and fake tensors: only when a plan is asked for
    from dinolite.plan.report import format_plan, make_plan

    torch.set_num_threads(1)  # the fake step computes nothing; one thread keeps the measuring forks safe
    with opt_ins.from_args(args).applied():
        cfg = load_config(args.config, args.overrides)
    plan = make_plan(
        cfg,
        args.config,
        nodes,
        gpus_per_node,
        get_gpu(args.gpu),
        efficiency=args.efficiency,
        usable=args.usable,
        network_gbs=args.network_gbs,
        full_depth=args.full_depth,
    )
    print(format_plan(plan, verbose=args.verbose))
    return 0 if plan.prediction.fits else 3


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return run_plan(args, args.nodes, args.gpus_per_node)


if __name__ == "__main__":
    sys.exit(main())
