"""Semantic-segmentation scores from a confusion matrix (the mmsegmentation / ADE20K conventions).

With C[t, p] the number of valid pixels of true class t predicted as p (pixels labelled
``ignore_index`` excluded):
    IoU_c     = C[c,c] / (sum_p C[c,p] + sum_t C[t,c] - C[c,c])
    mIoU      = mean of IoU_c over classes whose union is non-empty (absent classes are NaN, skipped)
    pixel_acc = trace(C) / sum(C)
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"target class {int(t.max())} outside [0, {num_classes}) (ignore index {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def segmentation_scores(confusion: torch.Tensor) -> dict:
    """``{"mIoU", "pixel_acc", "per_class_iou"}`` in percent; per-class IoU is null for absent classes."""
    conf = confusion.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) * 100.0 if present.any() else float("nan")
    total = conf.sum()
    return {
        "mIoU": miou,
        "pixel_acc": float(tp.sum() / total) * 100.0 if total > 0 else float("nan"),
        "per_class_iou": [None if math.isnan(v) else v * 100.0 for v in iou.tolist()],
    }
