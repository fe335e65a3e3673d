"""The GPU code paths run on CPU: bf16 autocast with FSDP2's mixed-precision policy on 2 gloo processes,
and ``torch.compile`` (Inductor's C++ backend) of the blocks and of the step.

bf16 tolerances come from bf16's precision. bf16 keeps 8 significant bits, so one rounding is off by at most
``u = 2**-9`` (about 0.2 %) relative; matmuls accumulate in fp32, so each layer adds errors of order ``u``,
and 20 AdamW steps let them compound. The bound allowed is ``16 u`` (3.1 %) on every step's loss and on the
relative L2 distance of the final weights: a run that diverged, or trained with another objective, is far
outside it (the loss moves by tens of percent over these steps). The measured gaps are in
benchmarks/RESULTS.md ("bf16 FSDP2 on gloo").
"""

from __future__ import annotations

import os

import pytest
import torch

from dinolite.config import load_config
from dinolite.distributed import DistributedEnv
from dinolite.train.build import build_run
from dinolite.train.run import Run
from tests.train import scale_launch
from tests.train.test_loop import TINY, fake_stream, one_thread  # noqa: F401 (one_thread: autouse)
from tests.train.test_run import assert_bitwise_equal, state, steps

BF16_UNIT_ROUNDOFF = 2.0**-9  # half the spacing of bf16's 8-bit significand
STEPS = 20
# Inductor generates vectorised C++ for the CPU it runs on, but under ATen's scalar dispatch level the
# headers it includes leave at::vec undeclared and the generated code does not build (torch 2.14). .ci/run
# reruns the numerics tests under that level; the compiled runs are checked in the native pass.
needs_vector_dispatch = pytest.mark.skipif(
    os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default",
    reason="Inductor's CPU code does not build under ATEN_CPU_CAPABILITY=default (at::vec undeclared, torch 2.14)",
)
DEMO_ARGS = ["--steps", str(STEPS), "--size", "demo", "--global-batch", "16", "--strategy", "full_shard"]


def _relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float((b[k].double() ** 2).sum()) for k in b if b[k].is_floating_point())
    return (num / den) ** 0.5


@pytest.mark.numerics
@pytest.mark.slow
def test_bf16_mixed_precision_fsdp_on_two_gloo_ranks_stays_close_to_fp32(tmp_path):
    fp32 = scale_launch.run(2, ["--out", str(tmp_path / "fp32"), *DEMO_ARGS], timeout=300)
    bf16 = scale_launch.run(2, ["--out", str(tmp_path / "bf16"), *DEMO_ARGS, "--precision", "bf16"], timeout=300)
    # FSDP's policy, not only autocast: the gathered weights a block computes with are bf16 ...
    assert bf16["forward_weight_dtypes"] == ["torch.bfloat16"]
    assert fp32["forward_weight_dtypes"] == ["torch.float32"]
    # ... while the sharded parameters the optimizer updates (and checkpoints hold) stay fp32
    assert {v.dtype for v in bf16["student"].values() if v.is_floating_point()} == {torch.float32}
    tolerance = 16 * BF16_UNIT_ROUNDOFF
    relative = (bf16["losses"] - fp32["losses"]).abs() / fp32["losses"].abs()
    assert relative.max() < tolerance, relative
    assert relative[0] > 1e-5  # bf16 did compute: two fp32 runs differ by ~1e-7 (2 ranks vs 1: < 1e-6)
    assert _relative_l2(bf16["student"], fp32["student"]) < tolerance
    assert _relative_l2(bf16["teacher"], fp32["teacher"]) < tolerance
    # the runs trained: the gap is small against what 20 steps changed
    assert fp32["losses"][-1] < fp32["losses"][0] and bf16["losses"][-1] < bf16["losses"][0]


# ------------------------------------------------------------------------------------------- compile

COMPILED = [*TINY, "distributed.compile=true"]


def test_a_block_and_the_whole_dinov2_step_trace_without_graph_breaks():
    """One graph each: a block on a list of crops of two sizes, and the objective's forward (student and
    teacher networks, heads, DINO / iBOT / KoLeo losses, the teacher centre's update) at a step."""
    with build_run(load_config("demo", TINY), DistributedEnv(), batches=fake_stream) as run:
        block = run.objective.student["backbone"].blocks[0]
        crops = [torch.randn(2, 17, 16), torch.randn(4, 5, 16)]
        explained = torch._dynamo.explain(block)(crops)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        torch._dynamo.reset()
        explained = torch._dynamo.explain(run.objective)(run.next_batch(), 5)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def _is_compiled(run: Run) -> bool:
    blocks = [*run.objective.student["backbone"].blocks, *run.objective.teacher["backbone"].blocks]
    return all(getattr(block, "_compiled_call_impl", None) is not None for block in blocks)


@pytest.mark.numerics
@pytest.mark.slow
@needs_vector_dispatch
def test_compiled_blocks_train_as_eager_does_within_fp32_rounding():
    """Inductor fuses and reorders float32 arithmetic, so not bitwise: 4 steps stay within 1e-5 relative
    (float32's epsilon is 1.2e-7; measured gaps in benchmarks/RESULTS.md, "torch.compile on CPU")."""
    with build_run(load_config("demo", TINY), DistributedEnv(), batches=fake_stream) as eager:
        eager_losses = steps(eager, 4)
        eager_state = state(eager)
    with build_run(load_config("demo", COMPILED), DistributedEnv(), batches=fake_stream) as compiled:
        assert compiled.sharding is not None and compiled.sharding.compile and _is_compiled(compiled)
        compiled_losses = steps(compiled, 4)
        compiled_state = state(compiled)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0)
    assert compiled_state.keys() == eager_state.keys()  # DINOv2's keys: no compile wrapper prefix
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert eager_losses[0] != eager_losses[-1]  # the runs trained


@pytest.mark.numerics
@pytest.mark.slow
@needs_vector_dispatch
def test_a_compiled_run_resumed_from_a_checkpoint_equals_the_uninterrupted_compiled_run(tmp_path):
    cfg = load_config("demo", COMPILED)
    with build_run(cfg, DistributedEnv(), tmp_path / "straight", batches=fake_stream) as straight:
        straight.resume()
        steps(straight, 4)
        assert _is_compiled(straight)
    with build_run(cfg, DistributedEnv(), tmp_path / "split", batches=fake_stream) as first:
        first.resume()
        steps(first, 2)
        first.save()
    with build_run(cfg, DistributedEnv(), tmp_path / "split", batches=fake_stream) as second:
        assert second.resume() is not None and second.iteration == 2
        steps(second, 2)
    assert_bitwise_equal(state(straight), state(second))
