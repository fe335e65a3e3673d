"""build_run: a Run built from a config, seeded, moved, sharded when asked, with its optimizer and
checkpoint manager; nothing on disk but the output folder.

The batches are test_loop.py's deterministic stand-in (``batches=fake_stream``); one process on CPU.
"""

from __future__ import annotations

import pytest
import torch

from dinolite.config import load_config
from dinolite.distributed import DistributedEnv
from dinolite.train.build import build_run
from dinolite.train.methods import get_method
from tests.train.test_loop import TINY, fake_stream, one_thread  # noqa: F401 (one_thread: autouse)
from tests.train.test_run import assert_bitwise_equal, state, steps

CPU = DistributedEnv()


def test_the_seed_fixes_the_initial_weights():
    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU) as first, build_run(cfg, CPU) as again:
        assert_bitwise_equal(state(first), state(again))
    with build_run(load_config("demo", [*TINY, "train.seed=1"]), CPU) as other:
        assert not torch.equal(
            other.objective.state_dict()["student.backbone.blocks.0.attn.qkv.weight"],
            first.objective.state_dict()["student.backbone.blocks.0.attn.qkv.weight"],
        )


def test_a_given_objective_is_the_runs_and_is_not_moved_when_already_on_the_device():
    """``objective.to`` is skipped when every tensor sits on the device already (dinolite-plan's fake
    tensors refuse it); the objective is put in training mode."""
    cfg = load_config("demo", TINY)
    objective = get_method(cfg.train.method).build_objective(cfg).eval()

    def refuse(*args, **kwargs):
        raise AssertionError("objective.to() called on an objective already on the device")

    objective.to = refuse
    with build_run(cfg, CPU, objective=objective) as run:
        assert run.objective is objective and objective.training
        assert run.device == torch.device("cpu") and run.sharding is None  # one process, nothing asked


def test_only_the_output_folder_is_made_and_the_checkpoints_carry_the_method(tmp_path):
    cfg = load_config("demo", TINY)
    with build_run(cfg, CPU, tmp_path / "run", batches=fake_stream) as run:
        assert list((tmp_path / "run").iterdir()) == []  # resume() writes config.yaml, not the build
        assert run.checkpoints is not None and run.output_dir == tmp_path / "run"
        assert run.checkpoints.method == get_method(cfg.train.method).record(cfg)
    with build_run(cfg, CPU, batches=fake_stream) as unsaved:
        assert unsaved.checkpoints is None and unsaved.output_dir is None


@pytest.mark.numerics
@pytest.mark.parametrize(
    "recipe",
    [
        # Barlow Twins' / DirectCLR's LARS with its 1-D exclusions
        ["optim.optimizer=lars", "optim.decay_rule=non_1d", "optim.lr_1d_mult=0.024", "optim.clip_grad=0"],
        # SimSiam's SGD on every parameter, a fixed-lr head; MSN's joint clipping with an unclipped module
        [
            "optim.optimizer=sgd",
            "optim.decay_rule=all",
            "optim.fixed_lr_modules=[dino_head]",
            "optim.clip_grad_scope=joint",
            "optim.unclipped_modules=[ibot_head]",
            "optim.warmup_start_lr=1e-4",
            "ibot.separate_head=true",
        ],
    ],
    ids=["lars", "sgd_joint_clip"],
)
def test_the_released_optimizers_are_built_from_the_config_and_resume_bitwise(tmp_path, recipe):
    """The optim section's optimizer and clipping reach the Run's step; their state (momentum buffers) is
    checkpointed, so a resumed run equals the uninterrupted one."""
    cfg = load_config("demo", [*TINY, *recipe])
    with build_run(cfg, CPU, tmp_path / "straight", batches=fake_stream) as straight:
        assert type(straight.optimizer).__name__ == ("LARS" if "lars" in recipe[0] else "SGD")
        straight.resume()
        results = [straight.step(straight.next_batch()) for _ in range(4)]
        straight.save()
    if "optim.clip_grad_scope=joint" in recipe:
        assert sorted(results[0].grad_norms) == ["grad_norm/ibot_head", "grad_norm/joint"]
        # (the prototypes, is_last_layer, stay frozen for the first epoch: DINO's freeze comes after)
        fixed = [g for g in straight.optimizer.param_groups if g.get("fixed_lr") and not g["is_last_layer"]]
        peak = straight.training_step.schedules.peak_lr
        assert fixed and all(g["lr"] == peak * g["lr_multiplier"] for g in fixed)
    with build_run(cfg, CPU, tmp_path / "split", batches=fake_stream) as first:
        first.resume()
        steps(first, 2)
        first.save()
    with build_run(cfg, CPU, tmp_path / "split", batches=fake_stream) as second:
        second.resume()
        steps(second, 2)
    assert_bitwise_equal(state(straight), state(second))
