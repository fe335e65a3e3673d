"""The correctness smoke of ``gpu_first_contact.py``: one DINOv2 training step under two settings that
must agree, built from the same seed on the same batch, and a time box for every stage.

Each check builds the trainer's own :class:`~dinolite.train.run.Run` twice (``build_run``: same
``train.seed``, so the same initial weights), draws the same synthetic batch (the step is seeded by
``Run.next_batch`` as training does, so drop-path and masks match too), takes one ``Run.step`` and compares
the losses and the per-module gradient norms (before clipping) of the two. A wrong kernel, dtype or
compiled graph gives O(1) differences; the tolerances below are sized for rounding only.
"""

from __future__ import annotations

import gc
import itertools
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch

from dinolite.config import load_config
from dinolite.distributed import destroy_distributed, init_distributed
from dinolite.train.build import build_run

# bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 2e-3) and autocast rounds every matmul input. The
# DINOv2 loss is a cross-entropy through softmaxes at temperature 0.1 (student) and 0.04 (teacher), which
# multiply a logit error by 10-25: on CPU at toy sizes one bf16 step lands 1e-3..1e-2 from fp32 on the
# losses and under 1e-2 on the gradient norms. 2e-2 / 5e-2 leave room for that rounding and still flag
# a wrong kernel or dtype, which moves them by O(1).
# KoLeo is left out of the bf16 comparisons (dino.koleo_loss_weight=0): at initialisation the CLS features
# of a batch are near duplicates, and -log(nearest-neighbour distance) and its 1/distance gradient turn
# bf16 rounding of those features into 7% on the loss and 11% on the backbone's gradient norm (measured
# on CPU, --quick sizes) - the conditioning of the term, not a faulty kernel. The compile check (fp32)
# keeps it.
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-2, 5e-2
NO_KOLEO = "dino.koleo_loss_weight=0"
# Compiled vs eager in fp32 (TF32 off): inductor fuses and reorders reductions, ~1e-6 relative per op.
FP32_LOSS_RTOL, FP32_GRAD_RTOL = 1e-4, 1e-3
# xformers vs SDPA, both in bf16 autocast: two kernels rounding differently, so the bf16 tolerances.
KERNEL_LOSS_RTOL, KERNEL_GRAD_RTOL = BF16_LOSS_RTOL, BF16_GRAD_RTOL


class StageTimeout(Exception):
    """A stage ran past its time box."""


@contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise :class:`StageTimeout` in this (main) thread after ``seconds`` (SIGALRM; POSIX only).

    A CUDA kernel or a compile call in C++ returns before the signal is handled, so a stage overruns by
    at most one such call; the shell wrapper's ``timeout`` is the hard cap on the whole."""

    def expire(signum: int, frame: Any) -> None:
        raise StageTimeout(f"ran past its time box of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class StageResult:
    """One check or one rung: ``status`` is ok | failed | skipped | timed out; ``detail`` says why/what."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def run_stage(name: str, seconds: float, body: Any) -> StageResult:
    """Run ``body() -> StageResult`` inside a time box; an exception is reported, never raised, so the
    other stages still run. Frees CUDA memory afterwards (a failed rung must not starve the next)."""
    start = time.perf_counter()
    try:
        with time_box(seconds):
            result = body()
    except StageTimeout as exc:
        result = StageResult(name, "timed out", str(exc))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failed stage is reported, the others still run
        result = StageResult(name, "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
    finally:
        destroy_distributed()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result.seconds = time.perf_counter() - start
    return result


def one_step(config: str, overrides: Sequence[str]) -> dict[str, float]:
    """Losses and pre-clipping gradient norms of the first ``Run.step`` of ``config`` with ``overrides``."""
    from benchmarks.train_throughput import synthetic_batches

    cfg = load_config(config, list(overrides))
    env = init_distributed(cfg.distributed.backend, cfg.train.device)
    device = torch.device(env.device)
    # The batch depends on the config's crops and the seed only, never on precision, kernel or compile.
    batches = synthetic_batches(cfg, 1, device, seed=cfg.train.seed)
    run = build_run(cfg, env, batches=lambda request: itertools.cycle(batches))
    result = run.step(run.next_batch())
    values = {f"loss/{k}": float(v.detach()) for k, v in result.output.terms.items()}
    values["loss"] = float(result.output.loss.detach())
    values.update({f"grad_norm/{k}": float(v) for k, v in result.grad_norms.items()})
    destroy_distributed()
    return values


def compare(reference: dict[str, float], other: dict[str, float], loss_rtol: float, grad_rtol: float) -> dict[str, Any]:
    """Largest relative difference of the losses and of the gradient norms, and whether each is in tolerance."""

    def worst(prefix: str) -> float:
        keys = [k for k in reference if k.startswith(prefix)]
        if not keys or any(not math.isfinite(other.get(k, math.nan)) for k in keys):
            return math.inf
        return max(abs(other[k] - reference[k]) / max(abs(reference[k]), 1e-12) for k in keys)

    loss, grad = worst("loss"), worst("grad_norm/")
    return {
        "loss_rel_diff": loss,
        "grad_norm_rel_diff": grad,
        "loss_rtol": loss_rtol,
        "grad_rtol": grad_rtol,
        "agrees": loss <= loss_rtol and grad <= grad_rtol,
    }


def pair_check(
    name: str,
    config: str,
    common: Sequence[str],
    reference: Sequence[str],
    other: Sequence[str],
    tolerances: tuple[float, float],
    what: str,
) -> StageResult:
    """One step with ``common + reference`` against one with ``common + other``."""
    ref = one_step(config, [*common, *reference])
    got = one_step(config, [*common, *other])
    verdict = compare(ref, got, *tolerances)
    detail = (
        f"{what}: loss rel diff {verdict['loss_rel_diff']:.2e} (tol {tolerances[0]:.0e}), "
        f"grad-norm rel diff {verdict['grad_norm_rel_diff']:.2e} (tol {tolerances[1]:.0e})"
    )
    status = "ok" if verdict["agrees"] else "failed"
    return StageResult(name, status, detail, data={**verdict, "reference": ref, "other": got})


def cuda_only(name: str, device: torch.device) -> Optional[StageResult]:
    return None if device.type == "cuda" else StageResult(name, "skipped", "skipped: no CUDA")


def bf16_check(config: str, common: Sequence[str]) -> StageResult:
    return pair_check(
        "bf16 step vs fp32 step",
        config,
        [*common, "student.attention=sdpa", NO_KOLEO],
        ["train.compute_precision=fp32"],
        ["train.compute_precision=bf16"],
        (BF16_LOSS_RTOL, BF16_GRAD_RTOL),
        "bf16 autocast vs fp32",
    )


def xformers_check(config: str, common: Sequence[str], device: torch.device) -> StageResult:
    from dinolite.models import xformers_available

    name = "xformers vs SDPA attention"
    if (skipped := cuda_only(name, device)) is not None:
        return skipped
    if not xformers_available():
        return StageResult(name, "skipped", "skipped: xformers is not installed")
    return pair_check(
        name,
        config,
        [*common, "train.compute_precision=bf16", NO_KOLEO],
        ["student.attention=sdpa"],
        ["student.attention=xformers"],
        (KERNEL_LOSS_RTOL, KERNEL_GRAD_RTOL),
        "bf16, xformers memory_efficient_attention vs SDPA",
    )


def compile_check(config: str, common: Sequence[str], device: torch.device) -> StageResult:
    name = "torch.compile vs eager"
    if (skipped := cuda_only(name, device)) is not None:  # the trainer compiles on CUDA only (eager on CPU)
        return skipped
    from dinolite.fsdp.sharding import plan_sharding

    plan = plan_sharding("full_shard", None, False, True, device.type, 1)
    if not plan.compile:  # e.g. no triton: the "compiled" step would be eager and the check meaningless
        return StageResult(name, "skipped", "skipped: " + "; ".join(plan.notes))
    torch._dynamo.reset()
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 would be a precision change, not a compile one
    try:
        return pair_check(
            name,
            config,
            [*common, "train.compute_precision=fp32", "student.attention=sdpa"],
            ["distributed.compile=false"],
            ["distributed.compile=true"],
            (FP32_LOSS_RTOL, FP32_GRAD_RTOL),
            "fp32, compiled blocks vs eager",
        )
    finally:
        torch.set_float32_matmul_precision(precision)
