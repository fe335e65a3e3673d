"""One rank of a real gloo run that accounts one training step the way dinolite-plan does (helper of
tests/plan/test_fake_step.py): ``python real_step_worker.py OUT.json key=value ...`` under torchrun's
variables (``tests/train/scale_launch.rank_env``). Rank 0 writes the account as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import dinolite.train.methods  # noqa: F401  (registers the methods' config sections)
from dinolite.config import load_config
from dinolite.distributed import init_distributed
from dinolite.plan.fake_step import account_step, prime_optimizer
from dinolite.plan.report import planned_config, synthetic_batch
from dinolite.train.build import build_run


def main() -> None:
    out, preset, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    cfg, _ = planned_config(load_config(preset, overrides))
    env = init_distributed("gloo", "cpu")
    batch = synthetic_batch(cfg)
    run = build_run(cfg, env, batches=lambda request: iter(()))
    run.start_at(cfg.optim.freeze_last_layer_epochs * run.epoch_length)
    prime_optimizer(run)
    account = account_step(run, batch)
    peak, split = account.memory.peak()
    if env.rank == 0:
        record = {
            "peak_bytes": peak,
            "by_category": split,
            "late_bytes_at_peak": account.memory.late_bytes_at_peak(),
            "flops": account.flops,
            "collectives": sorted(
                [c.op, list(c.group_ranks), c.calls, c.buffer_bytes] for c in account.collectives.values()
            ),
        }
        out.write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
