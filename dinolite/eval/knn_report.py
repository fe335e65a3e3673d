"""End-of-run kNN report: the trained network against raw pixels and the same network at random init.

Run after training when ``evaluation.knn_at_end`` is set (the demo). All three feature sets are
classified with the same weighted kNN (:func:`dinolite.eval.knn.knn_classify`: cosine similarity,
k = ``evaluation.knn_k``, votes ``exp(s / 0.07)``), so the numbers are comparable:

- ``raw_pixels``: the normalised image, flattened;
- ``random_init/{cls,avgpool,cls+avgpool}``: the backbone exactly as training started it (same seed).
  With LayerScale's tiny initial values a random ViT's CLS output is nearly the same for every image,
  so CLS alone sits near chance; CLS concatenated with the mean of the patch tokens is the meaningful
  random baseline;
- ``<network>/{cls,avgpool,cls+avgpool}``: the trained backbone from the final checkpoint, the
  method's evaluated network (``teacher`` for DINOv2's EMA teacher, ``student`` for methods without one).

``avgpool`` is the mean of the final-norm patch tokens alone (no CLS, no register token): the feature
of methods that train no CLS objective, e.g. I-JEPA, whose paper evaluates the average-pooled output
of the target encoder as its global image representation (Assran et al. 2023). ``cls`` is the DINO
protocol.

The network is read back from the checkpoint in a single process (no process group needed), so this
also works after a sharded multi-process run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dinolite.checkpoint import method_record
from dinolite.config import Config
from dinolite.data.builtin_sets import builtin_set, prepare_builtin_set
from dinolite.data.eval_dataset import build_eval_dataset
from dinolite.eval.backbone import load_any_backbone
from dinolite.eval.features import extract_features
from dinolite.eval.knn import knn_classify
from dinolite.eval.transforms import build_eval_transform
from dinolite.io import write_json_atomic
from dinolite.models import build_backbone

KNN_TEMPERATURE = 0.07


def eval_transform(size: int, mean: list[float], std: list[float]) -> Callable[[Any], torch.Tensor]:
    """The evaluation entrypoints' transform (DINOv2's resize by 256/224, centre crop), so the report
    and ``eval/knn.py`` give the same number for the same checkpoint."""

    return build_eval_transform(size, mean=mean, std=std)


def backbone_features(backbone: nn.Module, with_avgpool: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> CLS`` or ``images -> [CLS, mean of patch tokens]`` (both after the final norm)."""

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        out = backbone.forward_features(images)
        cls = out["x_norm_clstoken"]
        if not with_avgpool:
            return cls
        return torch.cat([cls, out["x_norm_patchtokens"].mean(dim=1)], dim=-1)

    return features


def feature_columns(name: str, cls_dim: int) -> dict[str, slice]:
    """Columns of ``[CLS (cls_dim), mean patch token]`` each reported feature set reads."""
    return {
        f"{name}/cls": slice(0, cls_dim),
        f"{name}/avgpool": slice(cls_dim, None),
        f"{name}/cls+avgpool": slice(None),
    }


def eval_sources(cfg: Config, output_dir: Path) -> tuple[list[str], list[str]]:
    """kNN train/val sources: ``evaluation.knn_train/knn_val``, or the train/val folders of a built-in
    ``data.source`` (``[digits]``, ``[fashion_mnist]``)."""
    if cfg.evaluation.knn_train and cfg.evaluation.knn_val:
        return list(cfg.evaluation.knn_train), list(cfg.evaluation.knn_val)
    name = builtin_set(cfg.data.source)
    if name is not None:
        prepared = prepare_builtin_set(name, output_dir / "data")
        return [str(prepared["train_folder"])], [str(prepared["val_folder"])]
    raise ValueError(
        "evaluation.knn_at_end is set but evaluation.knn_train / evaluation.knn_val are empty "
        f"(data.source={list(cfg.data.source)} is not a built-in set)"
    )


def random_init_backbone(cfg: Config) -> nn.Module:
    """The backbone as training initialised it (the loop seeds with ``train.seed`` before building)."""

    torch.manual_seed(cfg.train.seed)
    return build_backbone(cfg.student, img_size=cfg.crops.global_crops_size).eval()


def knn_report(
    cfg: Config, checkpoint_dir: Path, output_dir: Path, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Top-1 kNN accuracy (%) of each feature set; also written to ``output_dir/knn.json``."""

    device = torch.device(device)
    train_source, val_source = eval_sources(cfg, output_dir)
    transform = eval_transform(cfg.crops.global_crops_size, list(cfg.crops.mean), list(cfg.crops.std))
    budgets = {"max_image_pixels": cfg.data.max_image_pixels, "max_sample_bytes": cfg.data.max_sample_bytes}
    train_set = build_eval_dataset(train_source, transform, **budgets)
    val_set = build_eval_dataset(val_source, transform, **budgets)
    random_net = random_init_backbone(cfg).to(device)
    # One forward per network: CLS and avgpool are the first and last D columns of [CLS, avgpool].
    feature_fns: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {
        "raw_pixels": (lambda images: images.flatten(1), 0),
        "random_init": (backbone_features(random_net, with_avgpool=True), random_net.embed_dim),
    }
    # The method's evaluated network (DINOv2: the EMA teacher; the student of a method without one); each
    # student's, named "<student>.<network>", for a multi-student distillation run.
    for student in method_record(checkpoint_dir).get("students") or [None]:
        trained = load_any_backbone(checkpoint_dir, map_location=device, student=student)
        name = trained.spec.source if student is None else f"{student}.{trained.spec.source}"
        feature_fns[name] = (backbone_features(trained, with_avgpool=True), trained.embed_dim)
    k = cfg.evaluation.knn_k
    results: dict[str, float] = {}
    for name, (fn, cls_dim) in feature_fns.items():
        train = extract_features(fn, train_set, batch_size=256, device=device, progress=False, desc=name)
        val = extract_features(fn, val_set, batch_size=256, device=device, progress=False, desc=name)
        num_classes = int(max(train.labels.max(), val.labels.max())) + 1
        variants = {name: slice(None)} if not cls_dim else feature_columns(name, cls_dim)
        for label, columns in variants.items():
            knn = knn_classify(
                train.features[:, columns],
                train.labels,
                val.features[:, columns],
                val.labels,
                num_classes,
                ks=(k,),
                temperature=KNN_TEMPERATURE,
            )
            results[label] = float(knn["per_k"][str(k)]["top1"])
    write_json_atomic(output_dir / "knn.json", {"k": k, "temperature": KNN_TEMPERATURE, "top1": results})
    return results


def format_report(results: dict[str, float], k: int) -> str:
    """The table the demo prints."""
    lines = [f"kNN top-1 on the val split (k={k}, T={KNN_TEMPERATURE}, cosine):"]
    lines += [f"  {name:<26s} {acc:6.2f}%" for name, acc in results.items()]
    return "\n".join(lines)
