"""Online evaluation during training: kNN (and optionally a cheap linear probe) every N iterations.

DINOv2 evaluates its teacher periodically while training; lightly and stable-pretraining attach online
kNN / linear probes. Here the trainer calls :meth:`OnlineEvaluator.evaluate` with the evaluated network
(the method's ``eval_network`` backbone) every ``evaluation.online_every`` iterations, and logs the
result like any metric (``eval/knn_top1``, ``eval/linear_top1``: console, ``metrics.jsonl``,
TensorBoard, trackers); the collapse watchdog can use them as thresholds.

- kNN: the DINO protocol (:func:`dinolite.eval.knn.knn_classify`: cosine similarity, k =
  ``evaluation.knn_k``, votes ``exp(s / 0.07)``) of the held-out ``val`` images against the labelled
  ``train`` images, on the method's global feature (``features``, the registry's ``eval_features``):
  the final-norm CLS token, or the mean of the final-norm patch tokens for a method that trains no CLS
  token (I-JEPA).
- Linear probe (``evaluation.online_linear``): a few linear heads on the same cached features
  (:func:`dinolite.eval.linear.linear_probe_cached`, lrs ``ONLINE_LINEAR_LRS``, at least 10 epochs and
  ``ONLINE_LINEAR_MIN_STEPS`` steps, best head chosen on a held-out 10% of ``train``), so the head never
  sees ``val`` before it is scored.

The images are decoded and transformed once (the eval transform), kept as one tensor, and at most
``max_train`` / ``max_val`` of them are used, so an evaluation costs one forward pass over a few
thousand small images. Every rank runs the same forward passes (a sharded network needs all ranks in
each forward) and gets the same numbers; the trainer logs rank 0's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from dinolite.config import Config
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.eval.finite import check_finite_rows
from dinolite.eval.knn import knn_classify
from dinolite.eval.knn_report import KNN_TEMPERATURE, eval_sources, eval_transform
from dinolite.eval.linear import head_grid, linear_probe_cached

ONLINE_LINEAR_LRS: tuple[float, ...] = (1e-2, 1e-1, 1.0)  # before DINOv2's batch/256 scaling
ONLINE_LINEAR_MIN_STEPS = 200  # small banks get more epochs: a few steps leave the heads at their init
ONLINE_LINEAR_BATCH = 128
# The global image features a backbone is evaluated on: the final-norm CLS token, or the mean of the
# final-norm patch tokens (methods that train no CLS token; I-JEPA's protocol).
FEATURES = ("cls", "avgpool")


class LabelledImages(NamedTuple):
    """Images ``(N, 3, H, W)`` and their class labels ``(N,)`` (long, ``>= 0``)."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class OnlineEvalOptions:
    """How and when :class:`OnlineEvaluator` scores a backbone (``evaluation.*`` of the config).

    ``every``: every that many iterations (``evaluation.online_every``; 0: never); ``k``: the kNN's k
    (``evaluation.knn_k``); ``linear``: also the cheap linear probe (``evaluation.online_linear``);
    ``batch_size``: images per forward pass; ``seed``: the probe's generator (``train.seed``);
    ``features``: the global feature scored, one of :data:`FEATURES` (the method's ``eval_features``).
    """

    every: int
    k: int = 20
    linear: bool = False
    batch_size: int = 256
    seed: int = 0
    features: str = "cls"

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"evaluation.online_every must be >= 0 (0: off), got {self.every}")
        if self.features not in FEATURES:
            raise ValueError(f"online evaluation: features={self.features!r} is not one of {', '.join(FEATURES)}")
        if self.k < 1 or self.batch_size < 1:
            raise ValueError(f"online evaluation: k={self.k} and batch_size={self.batch_size} must be >= 1")


def load_labelled_images(source: Sequence[str], transform: Callable, limit: int) -> LabelledImages:
    """The first ``limit`` samples of ``source`` as ``(images (N, 3, H, W), labels (N,))``."""
    samples = list(itertools.islice(iter(build_eval_dataset(list(source), transform)), limit))
    if not samples:
        raise ValueError(f"online evaluation: {list(source)} holds no images")
    images = torch.stack([image for image, _, _ in samples])
    labels = torch.tensor([int(label) for _, label, _ in samples], dtype=torch.long)
    if int(labels.min()) < 0:
        raise ValueError(f"online evaluation: {list(source)} has unlabelled samples (label {int(labels.min())})")
    return LabelledImages(images, labels)


class OnlineEvaluator:
    """kNN / linear-probe accuracy of a backbone on fixed held-out images (see the module docstring):
    ``OnlineEvaluator(train, val, OnlineEvalOptions(every=...))``, or :meth:`from_config`."""

    def __init__(self, train: LabelledImages, val: LabelledImages, options: OnlineEvalOptions) -> None:
        self.options = options
        self.train_images, self.train_labels = train
        self.val_images, self.val_labels = val
        self.num_classes = int(max(self.train_labels.max(), self.val_labels.max())) + 1

    @classmethod
    def from_config(cls, cfg: Config, output_dir: Path, features: str = "cls") -> "OnlineEvaluator | None":
        """From ``cfg.evaluation`` (``online_every`` 0: None); sources as the end-of-run kNN report's;
        ``features``: the method's ``eval_features``."""
        ev = cfg.evaluation
        if ev.online_every <= 0:
            return None
        train_source, val_source = eval_sources(cfg, output_dir)
        transform = eval_transform(cfg.crops.global_crops_size, list(cfg.crops.mean), list(cfg.crops.std))
        train = load_labelled_images(train_source, transform, ev.online_max_train_images)
        val = load_labelled_images(val_source, transform, ev.online_max_val_images)
        options = OnlineEvalOptions(
            every=ev.online_every, k=ev.knn_k, linear=ev.online_linear, seed=cfg.train.seed, features=features
        )
        return cls(train, val, options)

    def due(self, iteration: int) -> bool:
        every = self.options.every
        return every > 0 and iteration % every == 0

    def _global_feature(self, backbone: nn.Module, images: Tensor) -> Tensor:
        # backbone(x) (not forward_features): a sharded root module gathers its parameters in forward.
        if self.options.features == "cls":
            return backbone(images)
        return backbone(images, is_training=True)["x_norm_patchtokens"].mean(dim=1)

    @torch.no_grad()
    def _features(self, backbone: nn.Module, images: Tensor, device: torch.device) -> Tensor:
        size = self.options.batch_size
        chunks = [
            self._global_feature(backbone, images[i : i + size].to(device)).float().cpu()
            for i in range(0, len(images), size)
        ]
        return torch.cat(chunks)

    def evaluate(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        """``{"eval/knn_top1": %, ["eval/linear_top1": %]}``; the backbone's train/eval mode is restored."""
        was_training = backbone.training
        backbone.eval()
        try:
            train = self._features(backbone, self.train_images, device)
            val = self._features(backbone, self.val_images, device)
        finally:
            backbone.train(was_training)
        # The trainer's own checks keep the weights finite; features can still overflow in the forward.
        # Stop with the cause named rather than log a chance-level accuracy as a measurement.
        for images, features in (("evaluation.knn_train", train), ("evaluation.knn_val", val)):
            check_finite_rows(
                features, f"online evaluation: the {self.options.features} features of {images}", "images"
            )
        knn = knn_classify(
            train,
            self.train_labels,
            val,
            self.val_labels,
            self.num_classes,
            ks=(self.options.k,),
            temperature=KNN_TEMPERATURE,
            headline_k=self.options.k,
        )
        results = {"eval/knn_top1": float(knn["top1"])}
        if self.options.linear:
            steps_per_epoch = max(int(0.9 * len(train)) // ONLINE_LINEAR_BATCH, 1)
            epochs = max(10, math.ceil(ONLINE_LINEAR_MIN_STEPS / steps_per_epoch))
            # fork_rng: the probe seeds its own generator; the training run's random stream is untouched.
            with torch.enable_grad(), torch.random.fork_rng(devices=[]):
                probe = linear_probe_cached(
                    train,
                    self.train_labels,
                    torch.arange(len(train)),
                    val,
                    self.val_labels,
                    embed_dim=train.shape[1],
                    n_available=1,
                    num_classes=self.num_classes,
                    specs=head_grid(ONLINE_LINEAR_LRS, [1], [False]),
                    epochs=epochs,
                    batch_size=ONLINE_LINEAR_BATCH,
                    seed=self.options.seed,
                )
            results["eval/linear_top1"] = float(probe.val_top1[probe.best])
        return results
