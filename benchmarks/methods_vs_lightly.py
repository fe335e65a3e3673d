"""dinolite's preset of each method against lightly's implementation of the same method (issue 26).

For every data set (the digits, Fashion-MNIST) and every method lightly implements, in one run:

* dinolite: ``dinolite-train --config <preset>`` on the data set's training shards (the preset as
  shipped; ``train.max_iterations`` and ``train.batch_size_per_gpu`` set to the budget);
* lightly: lightly's modules for the method (benchmarks/lightly_recipes.py) around the same ViT, from
  the same initial weights, on the same decoded training images, for the same budget;
* the same evaluation of both, and of the ViT at random init and of raw pixels: kNN top-1 (k = 20,
  cosine, T = 0.07) on the evaluated network's CLS, and DINOv2's linear-probe grid (the collapse lab's
  :func:`~dinolite.lab.evaluate.measure_network`), on the data set's own evaluation split.

A method is one row of :data:`METHODS` (its dinolite presets and its lightly recipe); a row whose preset
is not shipped yet is skipped with a note. ``--presets demo`` (the default) trains the digits-tuned
``demo_<method>`` presets, ``--presets small`` the generic small-image ``small_<method>`` ones
(benchmarks/methods_vs_lightly_presets.py). Results go to ``--output`` (JSON, written after each entry;
``--resume`` skips the entries it holds) and, with ``--write-results``, replace the marked table in
benchmarks/RESULTS.md. Needs lightly (benchmarks/README.md gives the pip line).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/methods_vs_lightly.py --output-dir /tmp/vs_lightly \
        --output vs_lightly.json --write-results benchmarks/RESULTS.md
    python benchmarks/methods_vs_lightly.py --quick --datasets digits --methods simclr
    OMP_NUM_THREADS=1 python benchmarks/methods_vs_lightly.py --presets small --output vs_lightly_small.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
PIP_LINE = "pip install --no-deps lightly==1.6.0 lightning-utilities (benchmarks/README.md)"
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

try:
    from benchmarks.lightly_recipes import RECIPES, train_lightly
except ImportError as missing:  # lightly is an optional benchmark dependency, never the package's
    raise SystemExit(f"{missing}: this benchmark needs lightly; {PIP_LINE}") from None
from benchmarks.methods_vs_lightly_presets import (  # noqa: E402
    METHODS,
    add_preset_arguments,
    check_resumed_presets,
    label_of,
    output_dir,
    preset_of,
    result_markers,
    reuse_lightly_side,
)
from dinolite.commands.train import main as train_main  # noqa: E402
from dinolite.config import Config, available_presets, load_config  # noqa: E402
from dinolite.data.builtin_sets import BUILTIN_SETS, prepare_builtin_set  # noqa: E402
from dinolite.data.eval_dataset import build_eval_dataset  # noqa: E402
from dinolite.eval.backbone import load_any_backbone  # noqa: E402
from dinolite.eval.features import ExtractedFeatures, extract_features  # noqa: E402
from dinolite.eval.knn import knn_classify  # noqa: E402
from dinolite.eval.linear import DINOV2_LEARNING_RATES, head_grid, linear_probe_cached, probe_features  # noqa: E402
from dinolite.eval.transforms import build_eval_transform  # noqa: E402
from dinolite.io import write_json_atomic  # noqa: E402
from dinolite.lab.evaluate import EvalData, kept_checkpoints, measure_network, random_init_backbone  # noqa: E402
from dinolite.lab.matrix import Measurements  # noqa: E402

logger = logging.getLogger("methods_vs_lightly")
KNN_K = 20
KNN_TEMPERATURE = 0.07
BEGIN, END = result_markers("demo")


def _budget(quick: bool) -> dict:
    return (
        {"iterations": 3, "batch_size": 16, "linear_epochs": 2}
        if quick
        else {"iterations": 300, "batch_size": 64, "linear_epochs": 10}
    )


class CachedEvalData(EvalData):
    """The lab's :class:`EvalData` with the eval-transformed images decoded once per data set: every
    network of the run reads the same images (on Fashion-MNIST a decode pass is ~30 s of each evaluation)."""

    def __init__(self, train_source: list[str], val_source: list[str], measurements: Measurements) -> None:
        super().__init__(train_source, val_source, measurements, device="cpu")
        self._cache: dict[str, TensorDataset] = {}

    def images(self, split: str, cfg: Config) -> TensorDataset:
        """``(image, label, index)`` of every ``split`` (train | val) image, through the eval transform."""
        if split not in self._cache:
            transform = build_eval_transform(
                cfg.crops.global_crops_size, mean=list(cfg.crops.mean), std=list(cfg.crops.std)
            )
            source = self.train_source if split == "train" else self.val_source
            items = list(build_eval_dataset(source, transform))
            self._cache[split] = TensorDataset(*(torch.stack([torch.as_tensor(x[i]) for x in items]) for i in range(3)))
        return self._cache[split]

    def features(
        self, backbone: torch.nn.Module, cfg: Config, spectrum_only: bool = False
    ) -> tuple[ExtractedFeatures, Optional[ExtractedFeatures], int]:
        n_blocks = min(4, backbone.n_blocks)

        @torch.no_grad()
        def fn(images: torch.Tensor) -> torch.Tensor:
            return probe_features(backbone, images, n_blocks)

        backbone.eval()
        train, val = (
            extract_features(fn, self.images(split, cfg), batch_size=256, progress=False) for split in ("train", "val")
        )
        return train, val, n_blocks


def _evaluate(backbone: torch.nn.Module, cfg: Config, data: EvalData, iteration: int) -> dict:
    start = time.perf_counter()
    measured = measure_network(backbone, cfg, data, iteration, full=True)
    return {
        "knn": measured["knn"]["top1"],
        "linear": measured["linear"]["top1"],
        "rankme": measured["spectrum"]["rankme"],
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def raw_pixels(cfg: Config, data: CachedEvalData, linear_epochs: int) -> dict:
    """kNN and the linear grid (one block, no avgpool) on the normalised eval-transformed pixels."""
    train, val = ((t.flatten(1), y, j) for t, y, j in (data.images(s, cfg).tensors for s in ("train", "val")))
    knn = knn_classify(train[0], train[1], val[0], val[1], 10, ks=(KNN_K,), temperature=KNN_TEMPERATURE)
    probe = linear_probe_cached(
        train[0],
        train[1],
        train[2],
        val[0],
        val[1],
        embed_dim=train[0].shape[1],
        n_available=1,
        num_classes=10,
        specs=head_grid(DINOV2_LEARNING_RATES, [1], [False]),
        epochs=linear_epochs,
        seed=cfg.train.seed,
    )
    return {"knn": knn["top1"], "linear": probe.to_json("heldout")["top1"]}


def _train_dinolite(preset: str, run_dir: Path, train_source: list[str], budget: dict, workers: int) -> float:
    overrides = [
        f"data.source=[{','.join(train_source)}]",
        f"data.num_workers={workers}",
        f"train.max_iterations={budget['iterations']}",
        f"train.batch_size_per_gpu={budget['batch_size']}",
        "evaluation.knn_at_end=false",
        "evaluation.online_every=0",
    ]
    start = time.perf_counter()
    if train_main(["--config", preset, "--output-dir", str(run_dir), *overrides]) != 0:
        raise RuntimeError(f"dinolite {preset} failed in {run_dir}")
    return time.perf_counter() - start


def run_entry(name: str, side: str, dataset: dict, budget: dict, args: argparse.Namespace) -> dict:
    """Train one side of one method on one data set and evaluate it."""
    preset = preset_of(name, args.presets)
    cfg = load_config(preset)
    run_dir = args.output_dir / dataset["name"] / name / side
    if side == "dinolite":
        seconds = _train_dinolite(preset, run_dir, dataset["train"], budget, args.workers)
        backbone = load_any_backbone(kept_checkpoints(run_dir)[-1][1])
    else:
        vit = random_init_backbone(cfg).requires_grad_(True).train()
        backbone, seconds = train_lightly(
            name, vit, dataset["images"], budget["iterations"], budget["batch_size"], cfg.train.seed, args.workers
        )
    result = _evaluate(backbone, cfg, dataset["eval"], budget["iterations"])
    return {**result, "train_seconds": round(seconds, 1)}


def _prepare(name: str, root: Path, budget: dict) -> dict:
    prepared = prepare_builtin_set(name, root / "data")
    measurements = Measurements(knn_k=KNN_K, linear_epochs=budget["linear_epochs"])
    return {
        "name": name,
        "train": list(prepared["train"]),
        "eval": CachedEvalData([prepared["train_folder"]], [prepared["val_folder"]], measurements),
        "images": torch.stack([x for x, _, _ in build_eval_dataset(prepared["train"], None)]),
    }


def selected_methods(requested: Optional[list[str]], preset_set: str = "demo") -> tuple[list[str], list[str]]:
    """(methods to run, notes on rows skipped because their preset in ``preset_set`` is not shipped)."""
    presets = set(available_presets())
    names = requested or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    run = [n for n in names if preset_of(n, preset_set) in presets and n in RECIPES]
    notes = [
        f"{n}: " + (f"preset {preset_of(n, preset_set)!r} is not shipped yet" if n in RECIPES else "no lightly recipe")
        for n in names
        if n not in run
    ]
    return run, notes


def _entries(entry: dict) -> list[dict]:
    """Every side's and baseline's result of one data set's entry."""
    sides = [side for method in entry["methods"].values() for side in method.values()]
    return sides + [entry[base] for base in ("random_init", "raw_pixels") if base in entry]


def markdown(results: dict) -> str:
    """The table of every data set in ``results``: kNN / linear top-1 of each side and the baselines."""
    lines = []
    presets = results.get("presets", "demo")  # files written before --presets existed: the demos
    for dataset, entry in results["datasets"].items():
        lines += [
            f"**{dataset}** (kNN k={KNN_K} on the evaluated network's CLS / DINOv2 linear grid, top-1 %; train wall s)",
            "",
            "| method (evaluated network) | dinolite kNN | lightly kNN | dinolite linear | lightly linear |"
            " dinolite s | lightly s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, sides in entry["methods"].items():
            d, li = sides.get("dinolite", {}), sides.get("lightly", {})
            cells = [f"{s[k]:.1f}" if k in s else "-" for k in ("knn", "linear") for s in (d, li)]
            times = [f"{s['train_seconds']:.0f}" if "train_seconds" in s else "-" for s in (d, li)]
            lines.append(f"| {label_of(name, presets)} | " + " | ".join(cells + times) + " |")
        for base in ("random_init", "raw_pixels"):
            if base in entry:
                b = entry[base]
                lines.append(f"| {base.replace('_', ' ')} | {b['knn']:.1f} | | {b['linear']:.1f} | | | |")
        donors = sorted({s["copied_from"] for s in _entries(entry) if "copied_from" in s})
        if donors:
            lines += ["", f"lightly's side and the baselines taken from {', '.join(donors)} (`--lightly-from`)."]
        lines.append("")
    return "\n".join(lines)


def write_results(path: Path, table: str, header: str, presets: str = "demo") -> None:
    """Replace the text between the preset set's markers in ``path`` (append a marked block when there is none):
    the demo and the generic presets' tables are two blocks."""
    begin, end = result_markers(presets)
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{header}\n\n{table}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=sorted(BUILTIN_SETS), default=["digits", "fashion_mnist"])
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all of {sorted(METHODS)}")
    parser.add_argument("--sides", nargs="+", choices=["dinolite", "lightly"], default=["dinolite", "lightly"])
    add_preset_arguments(parser)
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default: OUTPUT_DIR/results.json)")
    parser.add_argument("--resume", action="store_true", help="keep the entries --output already holds")
    parser.add_argument("--write-results", type=Path, default=None, help="RESULTS.md whose marked table to replace")
    parser.add_argument("--workers", type=int, default=1, help="data workers of each side (the presets' own: 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 iterations of batch 16, 2 probe epochs: a smoke test")
    parser.add_argument("--report-only", action="store_true", help="only write the table of the --output results")
    parser.add_argument(
        "--lightly-from",
        type=Path,
        default=None,
        help="a results file of the other --presets set: take lightly's entries and the baselines from it instead "
        "of training them again (refused where the two presets give lightly's side different inputs)",
    )
    return parser


def run_all(args: argparse.Namespace, output: Path, command: str) -> dict:
    """Train and evaluate every selected entry not in ``output`` yet (with ``--resume``); returns the results."""
    budget = _budget(args.quick)
    names, notes = selected_methods(args.methods, args.presets)
    results = json.loads(output.read_text()) if args.resume and output.exists() else {"datasets": {}}
    if args.resume and output.exists():
        check_resumed_presets(results, args.presets, output)
    results.update(
        presets=args.presets,
        budget=budget,
        skipped=notes,
        machine=f"{platform.node()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}",
        command=command,
    )
    results.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
    for note in notes:
        logger.info("skipped %s", note)
    if args.lightly_from is not None:
        donor = json.loads(args.lightly_from.read_text())
        for copied in reuse_lightly_side(results, donor, args.lightly_from, names, args.presets):
            logger.info("lightly's side of %s copied from %s", copied, args.lightly_from)
    for dataset_name in args.datasets:
        dataset = _prepare(dataset_name, args.output_dir, budget)
        entry = results["datasets"].setdefault(dataset_name, {"methods": {}})
        base_cfg = load_config(preset_of(names[0], args.presets))
        if "random_init" not in entry:
            entry["random_init"] = _evaluate(random_init_backbone(base_cfg), base_cfg, dataset["eval"], 0)
            entry["raw_pixels"] = raw_pixels(base_cfg, dataset["eval"], budget["linear_epochs"])
            write_json_atomic(output, results)
        for name in names:
            sides = entry["methods"].setdefault(name, {})
            for side in args.sides:
                if side in sides:
                    continue
                logger.info("%s: %s on %s", dataset_name, name, side)
                sides[side] = run_entry(name, side, dataset, budget, args)
                logger.info("%s: %s on %s: %s", dataset_name, name, side, sides[side])
                results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                write_json_atomic(output, results)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.output_dir = output_dir(args.output_dir, args.presets)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    output = args.output or args.output_dir / "results.json"
    if args.report_only:
        if not output.is_file():
            raise SystemExit(f"--report-only: no results file {str(output)!r}")
        results = json.loads(output.read_text())
    else:
        results = run_all(args, output, shlex.join(["python", "benchmarks/methods_vs_lightly.py", *argv]))
    table = markdown(results)
    print(table)
    if args.write_results:
        command = results["command"] if isinstance(results["command"], str) else " ".join(results["command"])
        header = (
            f"Command: `{command}` ({results.get('started', '?')} to {results.get('finished', '?')}); "
            f"machine: {results['machine']}; budget: {results['budget']}; dinolite presets: "
            f"{results.get('presets', 'demo')}."
        )
        write_results(args.write_results, table, header, results.get("presets", "demo"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
