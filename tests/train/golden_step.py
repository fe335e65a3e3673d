"""Record (or recompute) two DINOv2 training steps with a fixed seed and a fixed batch, in two precisions.

The golden fixture pins DINOv2's numerics across refactors of the trainer: every loss term of both
steps, every student gradient the optimizer saw on the second step (after the prototype freeze and
the per-module clipping), the per-module gradient norms, the centering buffers after the second step
and the teacher after its EMA update (which in turn depends on the AdamW step of the student).

Two consecutive iterations are run, the last one of the prototype freeze and the first one after it,
so that the freeze, AdamW's state carried from one step to the next, the schedules and the EMA are all
covered. The batch is drawn here from a seeded generator (not through the augmentation/collate code,
whose changes are not DINOv2 numerics) and its digest is stored so that a changed generator is named.

Each case is recorded twice (what each comparison guarantees where: tests/train/test_golden_step.py):

- ``float32`` (``dinov2_<case>.safetensors``): the step as training runs it. Compared bit for bit, which
  only holds where the CPU kernels round alike: the fixture's metadata names the environment (torch,
  CPU model, ATen's kernel capability, the BLAS/oneDNN dispatch variables).
- ``float64`` (``dinov2_<case>_float64.safetensors``): the same step with every tensor in float64 (the
  default dtype is float64 while the objective is built and run, so the weights are drawn, the batch is
  drawn and AdamW's state is kept in float64). Compared within a tolerance that float64 rounding does
  not reach on any CPU and that a change of the objective's logic does not hide under.

Two things are made portable here, not in the code under test: one thread (the reduction order of CPU
kernels depends on the thread count) and ``Tensor.bernoulli_(p)`` (stochastic depth), which torch builds
with MKL have drawn from MKL's own stream on Intel CPUs only; :func:`portable_bernoulli_` draws
``rand(float64) < p`` from torch's generator, which is what ``bernoulli_(p)`` computes elsewhere (the
same bits and the same generator state: checked by tests/train/test_golden_step.py).

Regenerate (only on purpose, when a numerical change of DINOv2 is intended and explained)::

    source .venv/bin/activate  # or any env with the package's test extras
    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/train/golden_step.py [case ...]

which rewrites both fixtures of each case (default: all). The float32 fixture is then bitwise valid on
the recording machine only; say in the commit which CPU recorded it. Tensors up to ``full_limit``
elements are stored in full; larger ones (the ViT-S case only, to keep the fixture small) as the
SHA-256 of their bytes in float32 (as strict as ``torch.equal``), and in float64 as a sketch:
``<key>.moments`` (sum, sum of absolute values, sum of squares) and ``<key>.sample`` (``SAMPLE_SIZE``
elements at evenly spaced flat indices).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dinolite.config import load_config
from dinolite.distributed import DistributedEnv
from dinolite.train.batches import BatchStreamFactory, StreamRequest
from dinolite.train.build import build_run
from dinolite.train.objective import SSLObjective

FIXTURE_DIR = Path(__file__).resolve().parent / "golden"
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
SAMPLE_SIZE = 256  # elements kept of each float64 tensor above full_limit
# Environment variables that change which CPU kernels MKL and oneDNN run (and so their rounding).
KERNEL_ENV_VARS = ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
_TORCH_BERNOULLI_ = torch.Tensor.bernoulli_


@dataclass(frozen=True)
class GoldenCase:
    preset: str
    overrides: tuple[str, ...]
    batch_size: int
    first_iteration: int  # the last frozen iteration; the second step is the first unfrozen one
    full_limit: int  # tensors with more elements are stored as digests (float32) or sketches (float64)


CASES = {
    # The demo preset as it ships (32 px digits ViT, 32 prototypes), with a smaller batch.
    "demo": GoldenCase("demo", (), batch_size=8, first_iteration=29, full_limit=10**9),
    # ViT-S/16 (depth 12, width 384, 6 heads, stochastic depth 0.1, LayerScale 1e-5) with small crops,
    # a small batch and few prototypes; epochs shortened so the step lands at the end of the freeze.
    "vits16": GoldenCase(
        "vits16",
        (
            "crops.global_crops_size=64",
            "crops.local_crops_size=32",
            "crops.local_crops_number=2",
            "dino.head_n_prototypes=256",
            "ibot.head_n_prototypes=256",
            "train.iterations_per_epoch=10",
            "train.device=cpu",
        ),
        batch_size=4,
        first_iteration=9,
        full_limit=4096,
    ),
}
# float64 tensors are stored in full up to this many elements (the demo's float64 fixture stays small).
FLOAT64_FULL_LIMIT = 4096
# The float64 comparison's relative tolerance: 200x the largest difference float64 rounding made between
# kernel capabilities, thread counts and BLAS/libm code paths, 20x below the effect of a relative change
# of 1e-9 in the student temperature (benchmarks/golden_float64_spread.py; benchmarks/RESULTS.md).
FLOAT64_RTOL = 1e-9


def golden_config(case: GoldenCase):
    return load_config(case.preset, [*case.overrides, f"train.batch_size_per_gpu={case.batch_size}"])


def make_batch(cfg, batch_size: int, seed: int, dtype: torch.dtype = torch.float32) -> dict:
    """A collated DINOv2 batch (docs/interfaces.md keys) drawn from a seeded generator.

    Half of the global crops (chosen at random) get between 10% and 50% of their patches masked, as
    iBOT's mask_sample_probability=0.5 and mask_ratio_min_max=(0.1, 0.5); each masked patch weighs
    1/#masked of its crop. The crops and the weights have ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    g_size, l_size = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    n_local = cfg.crops.local_crops_number
    n_tokens = (g_size // cfg.student.patch_size) ** 2
    global_crops = _draw((2 * batch_size, 3, g_size, g_size), g, dtype)
    local_crops = _draw((n_local * batch_size, 3, l_size, l_size), g, dtype)
    masks = torch.zeros(2 * batch_size, n_tokens, dtype=torch.bool)
    for row in torch.randperm(2 * batch_size, generator=g)[:batch_size].tolist():
        n_masked = int(torch.randint(max(1, n_tokens // 10), n_tokens // 2 + 1, (1,), generator=g))
        masks[row, torch.randperm(n_tokens, generator=g)[:n_masked]] = True
    counts = masks.sum(-1, keepdim=True).clamp(min=1)
    weights = (1.0 / counts).to(dtype).expand_as(masks)[masks]
    indices = masks.flatten().nonzero().flatten()
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": masks,
        "mask_indices_list": indices,
        "masks_weight": weights,
        "n_masked_patches": torch.tensor([indices.numel()]),
        "upperbound": int(indices.numel()),
    }


def golden_batches(cfg, batch_size: int, dtype: torch.dtype) -> BatchStreamFactory:
    """The golden stream: batch ``i`` is :func:`make_batch` seeded with ``1000 + i``."""

    def stream(request: StreamRequest) -> Iterator[dict]:
        for iteration in itertools.count(request.start_batch):
            yield make_batch(cfg, batch_size, seed=1000 + iteration, dtype=dtype)

    return stream


def _draw(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Unit-variance pixels: ``randn`` in float32 (as recorded); in float64 ``sqrt(3) (2u - 1)``, u uniform.

    float64 uses no transcendental function, so the batch is the same bits on every CPU: torch's
    ``randn`` goes through libm's ``log``/``sin``/``cos``, whose last bit depends on the CPU (FMA or not).
    """
    if dtype == torch.float32:
        return torch.randn(shape, generator=generator)
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * math.sqrt(3.0)


def digest(tensors: list[torch.Tensor]) -> torch.Tensor:
    """SHA-256 of the tensors' bytes (dtype and shape included) as a uint8 tensor."""
    h = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def sketch(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``moments`` (sum, sum of |x|, sum of x^2) and ``SAMPLE_SIZE`` evenly spaced elements, in float64."""
    flat = tensor.detach().flatten().double()
    indices = torch.arange(SAMPLE_SIZE) * flat.numel() // SAMPLE_SIZE
    moments = torch.stack([flat.sum(), flat.abs().sum(), flat.square().sum()])
    return {"moments": moments, "sample": flat[indices].clone()}


def portable_bernoulli_(self: torch.Tensor, p=0.5, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``self.bernoulli_(p)`` for a float ``p`` as ``rand(float64) < p`` from torch's CPU generator."""
    if isinstance(p, torch.Tensor):
        return _TORCH_BERNOULLI_(self, p, generator=generator)
    draws = torch.rand(self.shape, dtype=torch.float64, generator=generator, device=self.device)
    return self.copy_(draws < p)


@contextmanager
def golden_numerics(dtype: torch.dtype, threads: int = 1) -> Iterator[None]:
    """One thread, ``dtype`` as the default dtype and a portable ``bernoulli_``, restored on exit."""
    previous_threads, previous_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.Tensor.bernoulli_ = portable_bernoulli_
    try:
        yield
    finally:
        torch.Tensor.bernoulli_ = _TORCH_BERNOULLI_
        torch.set_default_dtype(previous_dtype)
        torch.set_num_threads(previous_threads)


def compute_record(
    name: str,
    precision: str = "float32",
    threads: int = 1,
    change: Callable[[SSLObjective], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the two golden steps of case ``name`` in ``precision`` and return what its fixture holds.

    The run is built by :func:`dinolite.train.build.build_run`, as training builds it, and steps through
    :meth:`~dinolite.train.run.Run.next_batch` / :meth:`~dinolite.train.run.Run.step`. ``threads`` other
    than 1 and ``change`` (applied to the built run's objective) are for measuring the float64 tolerance
    and the comparison's power; the fixtures are recorded without them.
    """
    case, dtype = CASES[name], PRECISIONS[precision]
    cfg = golden_config(case)
    full_limit = case.full_limit if dtype == torch.float32 else min(case.full_limit, FLOAT64_FULL_LIMIT)

    def put(record: dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu()
        if tensor.numel() <= full_limit:
            record[key] = tensor.clone().contiguous()
        elif dtype == torch.float32:
            record[key + ".sha256"] = digest([tensor])
        else:
            record.update({f"{key}.{part}": value for part, value in sketch(tensor).items()})

    with golden_numerics(dtype, threads):
        # The trainer's own build (seed, objective, parameter groups, AdamW, schedules) on one CPU process.
        run = build_run(cfg, DistributedEnv(), batches=golden_batches(cfg, case.batch_size, dtype))
        objective = run.objective
        if change is not None:
            change(objective)
        record: dict[str, torch.Tensor] = {}
        if dtype == torch.float32:
            record["init.student.sha256"] = digest([p for _, p in objective.student.named_parameters()])
        else:  # drawn through libm (log, sin, cos), whose last bit may differ between CPUs
            put(record, "init.student", torch.cat([p.detach().flatten() for p in objective.student.parameters()]))
        run.start_at(case.first_iteration)  # as a run resumed at the last frozen iteration
        for step in range(2):
            batch = run.next_batch()  # seeds the step (stochastic depth), then draws its batch
            record[f"step{step}.batch.sha256"] = digest([v for v in batch.values() if isinstance(v, torch.Tensor)])
            result = run.step(batch)
            output, grad_norms = result.output, result.grad_norms
            record[f"step{step}.loss"] = output.loss.detach().clone()
            for term, value in output.terms.items():
                record[f"step{step}.terms.{term}"] = value.detach().clone()
        for key, value in grad_norms.items():
            record[f"step1.{key}"] = torch.tensor(value, dtype=torch.float64)
        for pname, param in objective.student.named_parameters():
            put(record, f"step1.grad.{pname}", param.grad)
        for key, value in objective.extra_state().items():
            record[f"step1.extra.{key}"] = value.detach().clone()
        for pname, param in objective.teacher.named_parameters():
            put(record, f"step1.teacher.{pname}", param)
    return record


def relative_error(key: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error of a stored tensor; a sketch's moments each relative to their own scale."""
    a, e = actual.double().flatten(), expected.double().flatten()
    if key.endswith(".moments"):  # (sum, sum |x|, sum x^2): the sum's scale is sum |x|
        diff, scale = (a - e).abs(), torch.stack([e[1], e[1], e[2]])
        return float((diff / scale).max()) if bool((scale > 0).all()) else float(diff.max())
    diff, scale = float((a - e).norm()), float(e.norm())
    return diff / scale if scale > 0 else diff


def float64_mismatches(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What differs beyond FLOAT64_RTOL, a digest or a dtype, one line per tensor (empty: the same step)."""
    found = []
    for key in sorted(expected):
        a, e = actual[key], expected[key]
        if a.dtype != e.dtype or a.shape != e.shape:
            found.append(f"{key}: {a.dtype} {tuple(a.shape)}, recorded {e.dtype} {tuple(e.shape)}")
        elif key.endswith(".sha256"):
            if not torch.equal(a, e):
                found.append(f"{key}: other bytes than recorded")
        elif not relative_error(key, a, e) <= FLOAT64_RTOL:
            found.append(f"{key}: relative error {relative_error(key, a, e):.3g} > {FLOAT64_RTOL:g}")
    return found


def fixture_path(name: str, precision: str = "float32") -> Path:
    suffix = "" if precision == "float32" else f"_{precision}"
    return FIXTURE_DIR / f"dinov2_{name}{suffix}.safetensors"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_vendor() -> str:
    return _cpuinfo().get("vendor_id", platform.processor())


def cpu_model() -> str:
    """The CPU's model name with its family/model/stepping (``/proc/cpuinfo``), else ``platform``'s."""
    fields = _cpuinfo()
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return (
        f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}, "
        f"stepping {fields.get('stepping', '?')})"
    )


def environment() -> dict[str, str]:
    """What bitwise reproducibility of CPU kernels depends on, stored with the fixture."""
    return {
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_env": " ".join(f"{var}={os.environ[var]}" for var in KERNEL_ENV_VARS if var in os.environ),
    }


def write_fixture(name: str, precision: str) -> Path:
    path = fixture_path(name, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**environment(), "case": name, "precision": precision}
    save_file(compute_record(name, precision), str(path), metadata=metadata)
    return path


def read_fixture(name: str, precision: str = "float32") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The stored tensors of a fixture and its metadata (the recorder's environment, case, precision)."""
    path = fixture_path(name, precision)
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    return load_file(str(path)), metadata


if __name__ == "__main__":
    for case_name in sys.argv[1:] or list(CASES):
        for precision_name in PRECISIONS:
            written = write_fixture(case_name, precision_name)
            print(f"wrote {written} ({written.stat().st_size / 2**20:.2f} MiB)")
