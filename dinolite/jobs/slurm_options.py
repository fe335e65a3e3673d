"""The Slurm options every dinolite launcher shares (``dinolite-slurm``, ``dinolite-lab --slurm``) and
reading them back as :class:`~dinolite.jobs.slurm_submit.SlurmResources`; checks of a training config
against the requested hardware."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from dinolite.cli import non_negative_int, positive_float, positive_int
from dinolite.config import Config, ConfigError

if TYPE_CHECKING:  # submitit (the ``slurm`` extra) is needed to submit, not to print --help
    from dinolite.jobs import slurm_submit


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """The Slurm options every dinolite launcher shares (``dinolite-slurm``, ``launch/lab.py --slurm``):
    resources, ``--max-requeues`` and ``--dry-run``; read back with :func:`resources_from_args`."""
    res = parser.add_argument_group("resources")
    res.add_argument(
        "--nodes", "--nnodes", dest="nodes", type=positive_int, default=1, help="(--nnodes: DINOv2's name)"
    )
    res.add_argument(
        "--gpus-per-node",
        "--ngpus",
        "--gpus",
        dest="gpus_per_node",
        type=non_negative_int,
        default=8,
        help="one task per GPU; 0 for a CPU job (--ngpus, --gpus: DINOv2's names)",
    )
    res.add_argument(
        "--tasks-per-node", type=positive_int, default=None, help="tasks per node of a CPU job (default 1)"
    )
    res.add_argument("--cpus-per-task", type=positive_int, default=None, help="default 10 per GPU task, 1 per CPU task")
    res.add_argument("--mem-gb", type=positive_float, default=None, help="memory per node (default: the partition's)")
    res.add_argument(
        "--time",
        "--timeout",
        dest="time",
        type=positive_int,
        default=2800,
        help="wall-time limit in minutes (--timeout: DINOv2's name)",
    )
    res.add_argument("--partition")
    res.add_argument("--account")
    res.add_argument("--qos")
    res.add_argument("--constraint")
    res.add_argument(
        "--use-volta32",
        dest="constraint",
        action="store_const",
        const="volta32gb",
        help="same as --constraint volta32gb (DINOv2's flag)",
    )
    res.add_argument("--exclude", help="hosts to avoid (Slurm host list)")
    res.add_argument("--comment")
    res.add_argument("--job-name", default=None, help="default: dinolite-<config or matrix name>")
    res.add_argument(
        "--signal-delay-s",
        type=positive_int,
        default=120,
        help="USR2 is sent this many seconds before the time limit, to checkpoint",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--max-requeues", type=non_negative_int, default=10, help="requeues after preemption/time-out")
    run.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script and resolved config; submit nothing"
    )


SLURM_OPTIONS = frozenset(
    {
        "--nodes",
        "--nnodes",
        "--gpus-per-node",
        "--ngpus",
        "--gpus",
        "--tasks-per-node",
        "--cpus-per-task",
        "--mem-gb",
        "--time",
        "--timeout",
        "--partition",
        "--account",
        "--qos",
        "--constraint",
        "--use-volta32",
        "--exclude",
        "--comment",
        "--job-name",
        "--signal-delay-s",
        "--max-requeues",
        "--dry-run",
    }
)  # the options add_slurm_arguments adds (a launcher that also runs locally refuses them there)


def resources_from_args(args: argparse.Namespace, argv: Sequence[str], job_name: str) -> "slurm_submit.SlurmResources":
    """The resources asked for with :func:`add_slurm_arguments`' options; ``argv`` as given on the command
    line (``--tasks-per-node`` without ``--gpus-per-node`` asks for a CPU job)."""
    # submitit (the ``slurm`` extra, imported by slurm_submit) is needed to submit, not to parse --help
    from dinolite.jobs import slurm_submit

    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    gpus = args.gpus_per_node
    if args.tasks_per_node is not None and not {"--gpus-per-node", "--ngpus", "--gpus"} & given:
        gpus = 0  # --tasks-per-node alone asks for a CPU job
    return slurm_submit.SlurmResources(
        nodes=args.nodes,
        gpus_per_node=gpus,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        time_min=args.time,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        exclude=args.exclude,
        comment=args.comment,
        job_name=job_name,
        signal_delay_s=args.signal_delay_s,
    )


def check_training_fits(cfg: Config, resources: "slurm_submit.SlurmResources") -> None:
    """Config choices that cannot work on the requested hardware fail here, not on the cluster."""
    if resources.gpus_per_node == 0:
        if cfg.distributed.backend == "nccl":
            raise ConfigError("distributed.backend='nccl' needs GPUs, but the job asks for --gpus-per-node 0")
        if cfg.train.device == "cuda":
            raise ConfigError("train.device='cuda' needs GPUs, but the job asks for --gpus-per-node 0")
