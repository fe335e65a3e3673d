"""Dense against global quality over a long digits run, with and without Gram anchoring (issue 28 item 5).

DINOv3 (Siméoni et al. 2025, Sec. 4) reports that over long training the global features keep improving
while the dense ones degrade, and that Gram anchoring, started late from a trained model, repairs them.
This script runs that experiment on the digits demo:

1. ``base``: ``demo_gram`` with ``gram.use_loss=false`` for ``--epochs`` epochs of 30 iterations, every
   checkpoint kept (``--checkpoint-every``);
2. ``gram``: branched from ``base``'s checkpoint at ``--branch`` (weights, AdamW moments, schedules' position,
   data position, RNG: the run ``base`` would continue) with the Gram term on: the Gram teacher loaded from
   the EMA teacher at the branch, the weight rising 0 -> 2 over one epoch, the Gram teacher refreshed every
   epoch 3 times (``demo_gram``'s layout of DINOv3's ViT-7B phase, shifted to the branch); only the part
   after the branch is trained twice;
3. every checkpoint of both arms is measured (the teacher backbone, as the end-of-run kNN):

   * global: kNN top-1 (k = 20) of the CLS token, digits val against train (``gram_anchoring.py``);
   * dense: linear segmentation mIoU with ``dinolite.eval.segmentation``'s head (BatchNorm + 1x1 conv on
     the last layer's patch-token map, AdamW, cosine lr) on *digit segmentation*: each 32-px digit image
     with per-pixel labels ``0`` (background: grey value below ``INK_THRESHOLD`` = 128 of 255) or
     ``1 + class`` (ink pixels of a digit of that class), 11 classes, built from the run's own
     ``data/{train,val}`` image folders (scikit-learn's digits upsampled, ``dinolite.data.digits``);
     the head trains on the train split and is scored on val (mIoU over the 11 classes);
   * dense: patch-similarity locality and ink contrast (``gram_anchoring.locality``);
4. figures (each measure against the iteration, both arms) and a JSON of every row.

Usage (one training process at a time, as the shared machine needs; ``all`` does 1-4)::

    OMP_NUM_THREADS=1 python benchmarks/gram_dense.py all --root /tmp/gram_dense --epochs 30 --branch 300
    OMP_NUM_THREADS=1 python benchmarks/gram_dense.py measure /tmp/gram_dense/base /tmp/gram_dense/gram \\
        --output docs/gram_anchoring/dense_vs_global.json
    python benchmarks/gram_dense.py plot docs/gram_anchoring/dense_vs_global.json --output docs/gram_anchoring
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dinolite.train.methods  # noqa: E402,F401  (registers the method sections, gram's among them)
from dinolite.config import load_config  # noqa: E402
from dinolite.eval.backbone import load_any_backbone  # noqa: E402
from dinolite.eval.knn import knn_classify  # noqa: E402
from dinolite.eval.segmentation import (  # noqa: E402
    LinearSegmentationHead,
    evaluate_segmentation,
    train_segmentation_head,
)

_spec = importlib.util.spec_from_file_location("gram_anchoring_benchmark", ROOT / "benchmarks" / "gram_anchoring.py")
gram_anchoring = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gram_anchoring)

INK_THRESHOLD = 128  # a pixel is ink when its grey value (0..255, digits are light on black) is >= this
NUM_SEG_CLASSES = 11  # background + 10 digit classes
SEG_ITERATIONS = 300  # head steps of batch 64 (~13 passes over the 1500 training digits)
SEG_LR = 1e-2


# ----------------------------------------------------------------------------------------- data


def digit_masks(grey: torch.Tensor, labels: torch.Tensor, threshold: int = INK_THRESHOLD) -> torch.Tensor:
    """(N, H, W) uint8 grey images and (N,) digit classes -> (N, H, W) int64 per-pixel labels: 0 where the
    pixel is background (grey < ``threshold``), ``1 + class`` where it is ink."""
    if grey.dim() != 3 or labels.shape != grey.shape[:1]:
        raise ValueError(f"digit_masks: grey (N, H, W) and labels (N,), got {tuple(grey.shape)}, {tuple(labels.shape)}")
    ink = grey.long() >= threshold
    return torch.where(ink, 1 + labels.long()[:, None, None], torch.zeros((), dtype=torch.long))


def load_segmentation_split(folder: Path, size: int, mean: list[float], std: list[float]):
    """The digit segmentation split of ``folder/<class>/*.png``: normalised (N, 3, size, size) images (the
    evaluation transform), their masks (N, size, size), and the class labels."""
    images, labels = gram_anchoring.load_folder(folder, size, mean, std)
    paths = sorted(folder.glob("*/*.png"))
    grey = []
    for path in paths:
        img = Image.open(path).convert("L")
        if img.size != (size, size):
            raise ValueError(f"{path}: {img.size}, expected the run's {size}x{size} digits")
        grey.append(torch.from_numpy(np.array(img)))
    return images, digit_masks(torch.stack(grey), labels), labels


# ----------------------------------------------------------------------------------------- measures


def segmentation_miou(
    backbone: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    num_classes: int = NUM_SEG_CLASSES,
    iterations: int = SEG_ITERATIONS,
    lr: float = SEG_LR,
    seed: int = 0,
) -> dict:
    """Train ``eval/segmentation.py``'s linear head (last layer) on ``train`` = (images, masks) and score it
    on ``val`` (mIoU, pixel accuracy, per-class IoU, percent)."""
    size = train[0].shape[-1]
    embed_dim = backbone.embed_dim if hasattr(backbone, "embed_dim") else backbone.num_features
    torch.manual_seed(seed)
    head = LinearSegmentationHead(embed_dim, num_classes)
    device = torch.device("cpu")
    train_data, val_data = TensorDataset(*train), TensorDataset(*val)
    train_segmentation_head(
        backbone, head, train_data, n_layers=1, iterations=iterations, batch_size=64, lr=lr, device=device, seed=seed
    )
    return evaluate_segmentation(
        backbone,
        head,
        val_data,
        num_classes=num_classes,
        n_layers=1,
        mode="resize",
        crop_size=size,
        stride=size,
        device=device,
    )


def checkpoint_iteration(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[-1])


def measure_run(
    run: Path, seg_iterations: int = SEG_ITERATIONS, since: int = 0, until: float = float("inf")
) -> list[dict]:
    """One row per kept checkpoint of ``run`` (at iterations in [``since``, ``until``]): kNN, mIoU, locality."""
    cfg = load_config(str(run / "config.yaml"), unknown_sections="keep")
    mean, std = list(cfg.crops.mean), list(cfg.crops.std)
    size = cfg.crops.global_crops_size
    train_x, train_m, train_y = load_segmentation_split(run / "data" / "train", size, mean, std)
    val_x, val_m, val_y = load_segmentation_split(run / "data" / "val", size, mean, std)
    rows = []
    checkpoints = sorted(p for p in (run / "checkpoints").glob("iter_*") if p.is_dir() and "." not in p.name)
    for checkpoint in checkpoints:
        if not since <= checkpoint_iteration(checkpoint) <= until:
            continue
        backbone = load_any_backbone(checkpoint, network="teacher").eval()
        train_cls, _ = gram_anchoring.features(backbone, train_x)
        val_cls, val_patches = gram_anchoring.features(backbone, val_x)
        knn = knn_classify(train_cls, train_y, val_cls, val_y, num_classes=10, ks=(20,))
        seg = segmentation_miou(backbone, (train_x, train_m), (val_x, val_m), iterations=seg_iterations)
        row = {
            "run": run.name,
            "iteration": checkpoint_iteration(checkpoint),
            "knn_top1": knn["top1"],
            "seg_miou": seg["mIoU"],
            "seg_pixel_acc": seg["pixel_acc"],
        }
        row.update(gram_anchoring.locality(val_patches, val_x, cfg.student.patch_size))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------------------- runs


def gram_overrides(branch: int, iterations_per_epoch: int = 30) -> list[str]:
    """``demo_gram``'s Gram phase shifted to start at iteration ``branch``: the Gram teacher loaded from the
    EMA teacher there, the weight's half-cosine 0 -> 2 over the epoch that starts at the last epoch boundary
    at or before ``branch`` (the schedule counts whole epochs; at a branch inside an epoch the term starts
    part-way up that rise), the Gram teacher refreshed every epoch from ``branch`` + one epoch, 3 times."""
    if branch < 1:
        raise ValueError(f"--branch {branch}: the Gram arm branches from a trained checkpoint (iteration >= 1)")
    return [
        "gram.use_loss=true",
        f"gram.it_load_ema_teacher={branch}",
        f"gram.loss_weight_schedule.warmup_epochs={branch // iterations_per_epoch}",
        f"gram.it_first_update={branch + iterations_per_epoch}",
    ]


def branch_run(base: Path, target: Path, iteration: int, overrides: list[str]) -> Path:
    """Write ``target/checkpoints/iter_<iteration>``: ``base``'s checkpoint at ``iteration`` as a run of
    ``base``'s config plus ``overrides`` (which may add Gram anchoring) would have saved it. The Gram
    teacher's weights are the fresh build's: it is loaded from the EMA teacher at ``it_load_ema_teacher``
    (the branch), before any step uses it; its counters start at 0."""
    from dinolite.checkpoint.reader import load_checkpoint
    from dinolite.monitor.collapse import CollapseMonitor
    from dinolite.monitor.watchdog import Watchdog
    from dinolite.train.build import build_run
    from dinolite.train.logging import console_logger

    cfg = load_config(str(base / "config.yaml"), [*overrides, f"train.output_dir={target}"], unknown_sections="keep")
    source = base / "checkpoints" / f"iter_{iteration:08d}"
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no checkpoint of {base} at iteration {iteration}")
    with build_run(cfg, output_dir=target) as run:
        method = run.method  # the state train() adds before it resumes (dinolite.train.loop.train)
        monitor = CollapseMonitor.from_config(
            cfg.monitor, None, method.monitor_student_temp(cfg), method.monitor_embeddings, method.monitor_means
        )
        watchdog = Watchdog.from_config(cfg.monitor, console_logger(), method.watchdog_thresholds, monitor.metric_names)
        run.add_state("watchdog", watchdog)
        objective = run.objective
        gram = objective.gram if hasattr(objective, "gram") else None
        if gram is not None:
            del objective.gram  # base's checkpoint has no Gram teacher: load everything else
        load_checkpoint(source, run.app_state)
        if gram is not None:
            objective.gram = gram
        if run.iteration != iteration:
            raise RuntimeError(f"{source} resumed at iteration {run.iteration}, expected {iteration}")
        path = run.checkpoints.save(iteration, run.app_state, batches_consumed=iteration)
    for name in ("data",):  # the built-in data set, written once: reuse base's (same seed, same files)
        link = target / name
        if not link.exists():
            link.symlink_to((base / name).resolve())
    return path


def train(config: str, overrides: list[str], log: Path) -> None:
    command = [sys.executable, str(ROOT / "launch" / "local.py"), "--config", config, *overrides, "--no-progress"]
    print(" ".join(command), flush=True)
    with open(log, "a") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


# ----------------------------------------------------------------------------------------- figures

MEASURES = (
    ("seg_miou", "linear segmentation mIoU (%)"),
    ("locality", "patch-similarity locality"),
    ("ink_contrast", "ink contrast"),
    ("knn_top1", "kNN top-1 (%)"),
)


def plot(rows: list[dict], output: Path, branch: int | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.4))
    for ax, (key, label) in zip(axes, MEASURES):
        for run, style in (("base", "o-"), ("gram", "s--")):
            points = sorted((r["iteration"], r[key]) for r in rows if r["run"] == run)
            if run == "gram" and points:  # the Gram arm starts from base's checkpoint at the branch
                points = [
                    (r["iteration"], r[key]) for r in rows if r["run"] == "base" and r["iteration"] == branch
                ] + points
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, label="no Gram" if run == "base" else "Gram anchoring", ms=4)
        if branch is not None:
            ax.axvline(branch, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("iteration")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("digits demo: dense (mIoU, locality, ink contrast) and global (kNN) quality of the teacher")
    fig.tight_layout()
    path = output / "dense_vs_global.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_all = sub.add_parser("all", help="train base, branch and train gram, measure, plot")
    p_all.add_argument("--root", type=Path, required=True)
    p_all.add_argument("--epochs", type=int, default=30, help="epochs of 30 iterations (30: 900 iterations)")
    p_all.add_argument("--branch", type=int, default=300)
    p_all.add_argument("--checkpoint-every", type=int, default=100)
    p_all.add_argument("--output", type=Path, default=ROOT / "docs" / "gram_anchoring")
    p_branch = sub.add_parser("branch", help="write the Gram arm's checkpoint at the branch")
    p_branch.add_argument("base", type=Path)
    p_branch.add_argument("target", type=Path)
    p_branch.add_argument("--branch", type=int, default=300)
    p_measure = sub.add_parser("measure", help="measure every checkpoint of the runs")
    p_measure.add_argument("runs", nargs="+", type=Path)
    p_measure.add_argument("--output", type=Path, required=True)
    p_measure.add_argument("--since", type=int, default=0, help="skip checkpoints before this iteration")
    p_measure.add_argument("--until", type=float, default=float("inf"), help="skip checkpoints after this iteration")
    p_measure.add_argument("--seg-iterations", type=int, default=SEG_ITERATIONS)
    p_plot = sub.add_parser("plot")
    p_plot.add_argument("rows", type=Path, nargs="+", help="JSON files of measure")
    p_plot.add_argument("--output", type=Path, required=True)
    p_plot.add_argument("--branch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "branch":
        print(branch_run(args.base, args.target, args.branch, gram_overrides(args.branch)))
    elif args.command == "measure":
        rows = [row for run in args.runs for row in measure_run(run, args.seg_iterations, args.since, args.until)]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=1) + "\n")
    elif args.command == "plot":
        rows = [row for path in args.rows for row in json.loads(path.read_text())]
        print(plot(rows, args.output, args.branch))
    else:
        base, gram = args.root / "base", args.root / "gram"
        common = [
            f"optim.epochs={args.epochs}",
            f"train.checkpoint_every={args.checkpoint_every}",
            "train.keep_last_checkpoints=0",
        ]
        train("demo_gram", ["gram.use_loss=false", *common, f"train.output_dir={base}"], args.root / "base.log")
        branch_run(base, gram, args.branch, gram_overrides(args.branch))
        train("demo_gram", [*gram_overrides(args.branch), *common, f"train.output_dir={gram}"], args.root / "gram.log")
        rows = measure_run(base) + measure_run(gram, since=args.branch + 1)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "dense_vs_global.json").write_text(json.dumps(rows, indent=1) + "\n")
        plot(rows, args.output, args.branch)


if __name__ == "__main__":
    main()
