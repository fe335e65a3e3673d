"""End-of-run measurements of a lab run, from its checkpoints: kNN, linear probe, covariance spectra.

Everything is computed on the *evaluated network* (what ``load_any_backbone`` loads from a checkpoint:
the EMA teacher / target encoder, or the student when the method has none), on labelled evaluation
images shared by every run of a matrix, so the numbers compare across methods:

- kNN top-1 (k = ``measurements.knn_k``, cosine, DINO's weighted vote) on the final CLS feature, or on
  the mean patch token for a run with ``features: avgpool`` (methods that train no CLS objective);
- linear probe top-1: DINOv2's grid of linear heads on frozen features (CLS of the last 1 or 4 blocks,
  with or without average-pooled patches), best head chosen on held-out training images;
- the covariance spectrum of the L2-normalised features (the same ``features``; Jing et al. 2021) of the first
  ``spectrum_samples`` training images, at every checkpoint the run kept (the lab keeps one per
  ``iterations / spectra``) and at random init, with its RankMe and std x sqrt(d). Unlike the monitor's
  spectra (one training batch, N may be < D) these use N >> D images, so a near-zero tail means
  collapsed dimensions and not too few samples.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from dinolite.config import Config, StudentConfig
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.distributed import resolve_device
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.features import ExtractedFeatures, extract_features
from dinolite.eval.knn import knn_classify
from dinolite.eval.linear import (
    DINOV2_LEARNING_RATES,
    head_grid,
    linear_probe_cached,
    probe_features,
)
from dinolite.eval.transforms import build_eval_transform
from dinolite.io import write_json_atomic
from dinolite.lab.matrix import Measurements
from dinolite.models import build_backbone
from dinolite.monitor.metrics import covariance_spectrum, embedding_std, rankme

KNN_TEMPERATURE = 0.07
_CHECKPOINT_DIR = re.compile(r"iter_(\d{8})")  # CheckpointManager's complete checkpoints (no .tmp)


def lab_eval_transform(cfg: Config) -> Callable:
    """How the lab prepares an evaluation image for a run: its global-crop size, its normalisation, at a
    multiple of its patch size."""
    return build_eval_transform(
        cfg.crops.global_crops_size,
        mean=list(cfg.crops.mean),
        std=list(cfg.crops.std),
        patch_size=cfg.student.patch_size,
    )


def kept_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(iteration, directory)`` of every complete checkpoint under ``run_dir/checkpoints``."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for path in root.glob("iter_*") if root.is_dir() else []:
        match = _CHECKPOINT_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


class EvalData:
    """The evaluation images of a matrix and the device the networks run on (``train.device`` of the run,
    resolved like training: the first GPU when there is one)."""

    def __init__(
        self, train_source: list[str], val_source: list[str], measurements: Measurements, device: str = "auto"
    ) -> None:
        self.train_source = list(train_source)
        self.val_source = list(val_source)
        self.measurements = measurements
        self.device = resolve_device(device, local_rank=0)

    def features(
        self, backbone: nn.Module, cfg: Config, spectrum_only: bool = False
    ) -> tuple[ExtractedFeatures, Optional[ExtractedFeatures], int]:
        """Probe-layout features (:func:`probe_features`) of train and val, and the block count in them.

        ``spectrum_only``: the first ``spectrum_samples`` training images and no val (intermediate
        checkpoints need only their spectrum)."""
        transform = lab_eval_transform(cfg)
        n_blocks = min(4, backbone.n_blocks)

        @torch.no_grad()
        def fn(images: torch.Tensor) -> torch.Tensor:
            return probe_features(backbone, images, n_blocks)

        backbone.to(self.device)
        train_set = build_eval_dataset(self.train_source, transform)
        if spectrum_only:  # decode only what the spectrum uses
            train_set = list(itertools.islice(iter(train_set), self.measurements.spectrum_samples))
        train = extract_features(fn, train_set, batch_size=256, device=self.device, progress=False, desc="lab train")
        if spectrum_only:
            return train, None, n_blocks
        val = extract_features(
            fn,
            build_eval_dataset(self.val_source, transform),
            batch_size=256,
            device=self.device,
            progress=False,
            desc="lab val",
        )
        return train, val, n_blocks


def feature_columns(features: torch.Tensor, n_blocks: int, dim: int, kind: str = "cls") -> torch.Tensor:
    """``kind``'s columns of the probe layout ``[cls_1..cls_n, avgpool]``: the last block's CLS, or the
    mean patch token."""
    if kind == "avgpool":
        return features[:, n_blocks * dim : (n_blocks + 1) * dim]
    return features[:, (n_blocks - 1) * dim : n_blocks * dim]


def spectrum_entry(iteration: int, embedding: torch.Tensor) -> dict:
    """Covariance spectrum (descending eigenvalues), RankMe and std x sqrt(d) of (N, D) features."""
    return {
        "iteration": iteration,
        "num_samples": int(embedding.shape[0]),
        "eigenvalues": covariance_spectrum(embedding).tolist(),
        "rankme": rankme(embedding),
        "rankme_ratio": rankme(embedding) / min(embedding.shape),
        "std_ratio": embedding_std(embedding) * math.sqrt(embedding.shape[1]),
    }


def measure_network(
    backbone: nn.Module, cfg: Config, data: EvalData, iteration: int, full: bool, features: str = "cls"
) -> dict:
    """The spectrum entry at ``iteration``; with ``full`` also kNN and linear probe (per ``measurements``).
    ``features`` (cls | avgpool) is what the spectrum and the kNN read; the linear grid has both."""
    m = data.measurements
    train, val, n_blocks = data.features(backbone, cfg, spectrum_only=not full)
    dim = backbone.embed_dim

    def columns(x: torch.Tensor) -> torch.Tensor:
        return feature_columns(x, n_blocks, dim, features)

    out: dict = {"spectrum": spectrum_entry(iteration, columns(train.features[: m.spectrum_samples]))}
    if val is None:
        return out
    num_classes = int(max(train.labels.max(), val.labels.max())) + 1
    # kNN and the probe run where the network ran (features come back on CPU, batch by batch)
    train = ExtractedFeatures(*(t.to(data.device) for t in train))
    val = ExtractedFeatures(*(t.to(data.device) for t in val))
    if m.knn:
        knn = knn_classify(
            columns(train.features),
            train.labels,
            columns(val.features),
            val.labels,
            num_classes,
            ks=(m.knn_k,),
            temperature=KNN_TEMPERATURE,
        )
        out["knn"] = {"top1": knn["top1"], "k": m.knn_k, "features": features}
    if m.linear:
        specs = head_grid(DINOV2_LEARNING_RATES, sorted({1, n_blocks}), (False, True))
        probe = linear_probe_cached(
            train.features,
            train.labels,
            train.indices,
            val.features,
            val.labels,
            embed_dim=dim,
            n_available=n_blocks,
            num_classes=num_classes,
            specs=specs,
            epochs=m.linear_epochs,
            seed=cfg.train.seed,
        )
        summary = probe.to_json("heldout")
        out["linear"] = {"top1": summary["top1"], "best": summary["best"]}
    out["chance"] = 100.0 / num_classes
    return out


def evaluate_run(
    cfg: Config,
    run_dir: Path,
    data: EvalData,
    load: Callable[[Path], nn.Module] = load_any_backbone,
    features: str = "cls",
) -> dict:
    """Spectra at every kept checkpoint, kNN and linear probe at the last; ``{}`` without checkpoints."""
    checkpoints = kept_checkpoints(run_dir)
    if not checkpoints:
        return {}
    spectra = []
    final: dict = {}
    for position, (iteration, path) in enumerate(checkpoints):
        last = position == len(checkpoints) - 1
        measured = measure_network(load(path), cfg, data, iteration, full=last, features=features)
        spectra.append(measured.pop("spectrum"))
        if last:
            final = measured
    return {**final, "spectra": spectra, "evaluated_iteration": checkpoints[-1][0]}


def random_init_backbone(cfg: Config) -> nn.Module:
    """The backbone as training initialises it (the loop seeds with ``train.seed`` before building)."""
    torch.manual_seed(cfg.train.seed)
    return build_backbone(cfg.student, img_size=cfg.crops.global_crops_size).eval().requires_grad_(False)


# The student keys there were when baselines were first cached. Any key added since is left out of the
# cache key while it holds its schema default, so existing caches keep their names whatever keys are added
# later (a new key that is not at its default is another network, hence another baseline).
_FIRST_STUDENT_KEYS = frozenset(
    ("arch", "patch_size", "embed_dim", "depth", "num_heads", "drop_path_rate", "drop_path_uniform", "layerscale")
    + ("ffn_layer", "qkv_bias", "proj_bias", "ffn_bias", "num_register_tokens", "interpolate_antialias")
    + ("interpolate_offset", "attention", "pretrained_weights")
)


def _student_key(cfg: Config) -> dict:
    defaults = StudentConfig()
    return {k: v for k, v in vars(cfg.student).items() if k in _FIRST_STUDENT_KEYS or v != getattr(defaults, k)}


def random_init_baseline_path(cfg: Config, cache_dir: Path, features: str = "cls") -> Path:
    """Where the random-init baseline of ``cfg``'s architecture (and eval transform, seed, features) is
    cached (the CLS baselines keep their earlier names, and so do students whose later-added keys hold
    their defaults)."""
    key = json.dumps(
        {
            "student": _student_key(cfg),
            "size": cfg.crops.global_crops_size,
            "seed": cfg.train.seed,
            "mean": list(cfg.crops.mean),
            "std": list(cfg.crops.std),
            **({} if features == "cls" else {"features": features}),
        },
        sort_keys=True,
        default=str,
    )
    return Path(cache_dir) / f"random_init_{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def random_init_baseline(cfg: Config, data: EvalData, cache_dir: Path, features: str = "cls") -> dict:
    """kNN, linear probe and spectrum of the architecture at random init, cached per architecture."""
    path = random_init_baseline_path(cfg, cache_dir, features)
    if path.is_file():
        return json.loads(path.read_text())
    result = measure_network(random_init_backbone(cfg), cfg, data, 0, full=True, features=features)
    write_json_atomic(path, result)
    return result


def evaluated_spectra(result: Optional[dict], baseline: Optional[dict]) -> list[dict]:
    """The run's spectra with the random-init one first (iteration 0)."""
    spectra = list((result or {}).get("spectra", []))
    if baseline and "spectrum" in baseline and not any(s["iteration"] == 0 for s in spectra):
        spectra.insert(0, baseline["spectrum"])
    return spectra
