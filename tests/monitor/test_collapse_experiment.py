"""The documented collapse experiment (docs/collapse_experiment.md) through the real training loop.

A tiny DINOv2 on scikit-learn's digits, default watchdog thresholds with ``monitor.action=stop``:
- healthy (the demo recipe): runs to the end, never flagged;
- no centering (``teacher.center_momentum=1.0`` keeps the centre at its initial 0) and no teacher EMA
  (``momentum_teacher=0``): the sharpened teacher puts the whole batch on one prototype within a few
  iterations, and the one-hot rule (``collapse/teacher_mean_entropy < 0.3``) stops the run.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

TINY = [
    "student.embed_dim=32", "student.depth=2", "student.num_heads=2", "student.patch_size=4",
    "crops.global_crops_size=16", "crops.local_crops_size=8", "crops.local_crops_number=2",
    "dino.head_n_prototypes=64", "dino.head_bottleneck_dim=32", "dino.head_hidden_dim=64",
    "ibot.head_n_prototypes=64", "ibot.head_bottleneck_dim=32", "ibot.head_hidden_dim=64",
    "train.batch_size_per_gpu=8", "train.iterations_per_epoch=10", "optim.epochs=10", "optim.warmup_epochs=1",
    "train.checkpoint_every=10", "train.device=cpu", "data.num_workers=0", "evaluation.knn_at_end=false",
    "monitor.every=2", "monitor.action=stop",
]
NO_CENTERING = ["teacher.center_momentum=1.0", "teacher.momentum_teacher=0.0", "teacher.final_momentum_teacher=0.0"]
ITERATIONS = 26


def _digits_stream(cfg, source, rank, world_size, start_batch):
    """Stand-in for dinolite.data's loader while it lands: digits -> multi-crop -> DINOv2 batch keys."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from dinolite.data.augment import MultiCropAugmentation

    augment = MultiCropAugmentation.from_config(cfg.crops)
    digits = load_digits().images
    images = [Image.fromarray((d / 16 * 255).astype(np.uint8)).resize((32, 32)).convert("RGB") for d in digits]
    generator = torch.Generator().manual_seed(cfg.train.seed)
    batch_size, grid = cfg.train.batch_size_per_gpu, cfg.crops.global_crops_size // cfg.student.patch_size
    step = 0
    while True:
        picks = torch.randint(len(images), (batch_size,), generator=generator).tolist()
        samples = [augment(images[i], generator=generator) for i in picks]
        step += 1
        if step <= start_batch:
            continue
        masks = torch.zeros(2 * batch_size, grid * grid, dtype=torch.bool)
        masks[::2, : grid * grid // 4] = True  # a quarter of the patches of every other crop, for iBOT
        yield {
            "collated_global_crops": torch.stack([s["global_crops"][c] for c in range(2) for s in samples]),
            "collated_local_crops": torch.stack(
                [s["local_crops"][c] for c in range(cfg.crops.local_crops_number) for s in samples]
            ),
            "collated_masks": masks,
            "mask_indices_list": masks.flatten().nonzero().flatten(),
            "masks_weight": (1.0 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks].float(),
            "n_masked_patches": torch.tensor([int(masks.sum())]),
            "upperbound": int(masks.sum()),
            "skipped_samples": 0,
        }


def _train(tmp_path: Path, name: str, overrides: list[str], monkeypatch):
    from dinolite.config import load_config
    from dinolite.train import builders
    from dinolite.train.distributed import init_distributed
    from dinolite.train.loop import train

    import dinolite.data

    if not hasattr(dinolite.data, "build_train_loader"):
        monkeypatch.setattr(builders, "resolve_train_source", lambda cfg, out, is_main, barrier: ["digits"])
        monkeypatch.setattr(builders, "build_data_stream", _digits_stream)
    cfg = load_config("demo", TINY + [f"train.max_iterations={ITERATIONS}"] + overrides)
    result = train(cfg, tmp_path / name, init_distributed("gloo", "cpu", environ={}))
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    collapse = [r for r in records if "collapse/teacher_mean_entropy" in r]
    return result, collapse


@pytest.mark.slow
def test_healthy_run_is_not_flagged_and_no_centering_is_stopped(tmp_path, monkeypatch):
    healthy, healthy_log = _train(tmp_path, "healthy", [], monkeypatch)
    assert healthy.status == "finished" and healthy.iteration == ITERATIONS
    assert len(healthy_log) == ITERATIONS // 2
    assert min(r["collapse/teacher_mean_entropy"] for r in healthy_log if r["iteration"] >= 20) > 1.0

    collapsed, collapsed_log = _train(tmp_path, "no_centering", NO_CENTERING, monkeypatch)
    assert collapsed.status == "stopped"
    # after_iteration 20, patience 3, measured every 2: the third flagged measurement is iteration 24.
    assert collapsed.iteration == 24
    assert "collapse/teacher_mean_entropy" in collapsed.message
    assert "below min 0.3" in collapsed.message and "iteration 24" in collapsed.message
    assert collapsed_log[-1]["collapse/teacher_mean_entropy"] < 0.3
    # The last good checkpoint (iteration 20, before the collapse was confirmed) is kept.
    assert collapsed.checkpoint_path is not None and "20" in Path(collapsed.checkpoint_path).name
