"""Semantic segmentation: the confusion matrix of predicted against labelled classes, and IoU.

Used for the teacher's validation (``cosme train-teacher``) and the drive of ``cosme demo``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np

__all__ = ["ConfusionMatrix", "iou_from_confusion", "format_iou_table"]


class ConfusionMatrix:
    """``conf[gt, pred]`` pixel counts of ``num_classes`` classes; labels ≥ ``num_classes``
    (void, 255) are not counted, predictions beyond the table count as wrong (one extra column)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.conf = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        nc = self.num_classes
        seg = gt < nc
        g, p = gt[seg].astype(np.int64), np.minimum(pred[seg].astype(np.int64), nc)
        self.conf += np.bincount(g * (nc + 1) + p, minlength=nc * (nc + 1)).reshape(nc, nc + 1)

    def iou(self, names: Sequence[str]) -> Dict[str, Any]:
        """:func:`iou_from_confusion` of the counts so far."""
        return iou_from_confusion(self.conf, names)


def iou_from_confusion(conf: np.ndarray, names: Sequence[str]) -> Dict[str, Any]:
    """``conf[gt, pred]`` pixel counts → per-class IoU, mIoU (Cityscapes: over classes with
    TP+FP+FN > 0), mIoU over classes present in the labels, and pixel accuracy (fractions).

    ``conf`` may have more columns than rows: predictions outside the class table (the extra
    columns) count as wrong for their ground-truth class and as no class's prediction."""
    conf = conf.astype(np.float64)
    n = conf.shape[0]
    tp = np.diag(conf[:, :n])
    gt, pred = conf.sum(1), conf[:, :n].sum(0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    present = gt > 0
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "miou_present": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / conf.sum()) if conf.sum() else float("nan"),
        "iou": {name: (None if math.isnan(v) else float(v)) for name, v in zip(names, iou)},
        "pixels": int(conf.sum()),
        "present": [int(c) for c in np.flatnonzero(present)],
    }


def format_iou_table(result: Dict[str, Any]) -> str:
    """Per-class IoU lines (classes absent from labels and predictions are left out)."""
    rows = [f"  {name:<14s} {100 * v:6.2f}" for name, v in result["iou"].items() if v is not None]
    rows.append(
        f"  {'mIoU':<14s} {100 * result['miou']:6.2f}   (over classes present: "
        f"{100 * result['miou_present']:.2f}, pixel accuracy "
        f"{100 * result['pixel_accuracy']:.2f})"
    )
    return "\n".join(rows)
