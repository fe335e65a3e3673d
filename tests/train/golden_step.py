"""Record (or recompute) two DINOv2 training steps with a fixed seed and a fixed batch.

The golden fixture pins DINOv2's numerics across refactors of the trainer: every loss term of both
steps, every student gradient the optimizer saw on the second step (after the prototype freeze and
the per-module clipping), the per-module gradient norms, the centering buffers after the second step
and the teacher after its EMA update (which in turn depends on the AdamW step of the student).

Two consecutive iterations are run, the last one of the prototype freeze and the first one after it,
so that the freeze, AdamW's state carried from one step to the next, the schedules and the EMA are all
covered. The batch is drawn here from a seeded generator (not through the augmentation/collate code,
whose changes are not DINOv2 numerics) and its digest is stored so that a changed generator is named.

Regenerate (only on purpose, when a numerical change of DINOv2 is intended and explained)::

    source /work/venv/bin/activate  # or any env with the package's test extras
    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/train/golden_step.py

which rewrites ``tests/train/golden/dinov2_{demo,vits16}.safetensors``. Tensors up to ``full_limit``
elements are stored in full; larger ones (the ViT-S case only, to keep the fixture small) as the
SHA-256 of their bytes, which is as strict as ``torch.equal`` but gives no diagnostic beyond the name.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dinolite.config import load_config
from dinolite.train.loop import run_training_step, seed_step
from dinolite.train.methods import get_method
from dinolite.train.optim import build_optimizer, get_param_groups
from dinolite.train.schedules import build_schedules

FIXTURE_DIR = Path(__file__).resolve().parent / "golden"


@dataclass(frozen=True)
class GoldenCase:
    preset: str
    overrides: tuple[str, ...]
    batch_size: int
    first_iteration: int  # the last frozen iteration; the second step is the first unfrozen one
    full_limit: int  # tensors with more elements are stored as digests


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


def golden_config(case: GoldenCase):
    return load_config(case.preset, [*case.overrides, f"train.batch_size_per_gpu={case.batch_size}"])


def make_batch(cfg, batch_size: int, seed: int) -> dict:
    """A collated DINOv2 batch (docs/interfaces.md keys) drawn from a seeded generator.

    Half of the global crops (chosen at random) get between 10% and 50% of their patches masked, as
    iBOT's mask_sample_probability=0.5 and mask_ratio_min_max=(0.1, 0.5); each masked patch weighs
    1/#masked of its crop.
    """
    g = torch.Generator().manual_seed(seed)
    g_size, l_size = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    n_local = cfg.crops.local_crops_number
    n_tokens = (g_size // cfg.student.patch_size) ** 2
    global_crops = torch.randn(2 * batch_size, 3, g_size, g_size, generator=g)
    local_crops = torch.randn(n_local * batch_size, 3, l_size, l_size, generator=g)
    masks = torch.zeros(2 * batch_size, n_tokens, dtype=torch.bool)
    for row in torch.randperm(2 * batch_size, generator=g)[:batch_size].tolist():
        n_masked = int(torch.randint(max(1, n_tokens // 10), n_tokens // 2 + 1, (1,), generator=g))
        masks[row, torch.randperm(n_tokens, generator=g)[:n_masked]] = True
    counts = masks.sum(-1, keepdim=True).clamp(min=1)
    weights = (1.0 / counts).expand_as(masks)[masks]
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


def digest(tensors: list[torch.Tensor]) -> torch.Tensor:
    """SHA-256 of the tensors' bytes (dtype and shape included) as a uint8 tensor."""
    h = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def _put(record: dict, key: str, tensor: torch.Tensor, full_limit: int) -> None:
    tensor = tensor.detach().cpu()
    if tensor.numel() <= full_limit:
        record[key] = tensor.clone().contiguous()
    else:
        record[key + ".sha256"] = digest([tensor])


def compute_record(name: str) -> dict[str, torch.Tensor]:
    """Run the two golden steps of case ``name`` and return everything the fixture holds."""
    case = CASES[name]
    cfg = golden_config(case)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of CPU kernels depends on the thread count
    try:
        torch.manual_seed(cfg.train.seed)
        objective = get_method(cfg.train.method).build_objective(cfg)
        objective.train()
        record: dict[str, torch.Tensor] = {
            "init.student.sha256": digest([p for _, p in objective.student.named_parameters()]),
        }
        groups = get_param_groups(objective.student, cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult)
        optimizer = build_optimizer(groups, cfg.optim.adamw_beta1, cfg.optim.adamw_beta2)
        schedules = build_schedules(cfg.optim, cfg.train.iterations_per_epoch, case.batch_size)
        for step, iteration in enumerate((case.first_iteration, case.first_iteration + 1)):
            batch = make_batch(cfg, case.batch_size, seed=1000 + iteration)
            record[f"step{step}.batch.sha256"] = digest([v for v in batch.values() if isinstance(v, torch.Tensor)])
            seed_step(cfg.train.seed, 0, iteration)
            result = run_training_step(objective, optimizer, schedules, batch, iteration, cfg.optim.clip_grad)
            output, grad_norms = result.output, result.grad_norms
            record[f"step{step}.loss"] = output.loss.detach().clone()
            for term, value in output.terms.items():
                record[f"step{step}.terms.{term}"] = value.detach().clone()
        for key, value in grad_norms.items():
            record[f"step1.{key}"] = torch.tensor(value, dtype=torch.float64)
        for pname, param in objective.student.named_parameters():
            _put(record, f"step1.grad.{pname}", param.grad, case.full_limit)
        for key, value in objective.extra_state().items():
            record[f"step1.extra.{key}"] = value.detach().clone()
        for pname, param in objective.teacher.named_parameters():
            _put(record, f"step1.teacher.{pname}", param, case.full_limit)
        return record
    finally:
        torch.set_num_threads(previous_threads)


def fixture_path(name: str) -> Path:
    return FIXTURE_DIR / f"dinov2_{name}.safetensors"


def environment() -> dict[str, str]:
    """What bitwise reproducibility of CPU kernels depends on, stored with the fixture."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def write_fixture(name: str) -> Path:
    path = fixture_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(compute_record(name), str(path), metadata={**environment(), "case": name})
    return path


def read_fixture(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_path(name)))


if __name__ == "__main__":
    for case_name in sys.argv[1:] or list(CASES):
        written = write_fixture(case_name)
        print(f"wrote {written} ({written.stat().st_size / 2**20:.2f} MiB)")
