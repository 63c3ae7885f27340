"""The drive's books: pooled anomaly pixels, the segmentation confusion matrix and the mask's
pixel counts against the ground truth."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from cosme_ros.metrics import ConfusionMatrix, PooledPixels


class DriveScores:
    """Pooled labelled pixels of the drive (:class:`~cosme_ros.metrics.PooledPixels`, exact),
    the segmentation confusion matrix and, with a node mask, its pixel counts against the
    ground truth."""

    def __init__(self, num_classes: int, frames: int):
        self.nc = num_classes
        self.pooled = PooledPixels(["score"], frames, memory_limit_gib=None, unit="frames")
        self.confusion = ConfusionMatrix(num_classes)
        self.mask_counts = np.zeros(3, np.int64)  # tp, fp, fn
        self.has_mask = False
        self.frames = 0

    def add(
        self,
        score: np.ndarray,
        anomaly: np.ndarray,
        classes: np.ndarray,
        semantic: np.ndarray,
        mask: Optional[np.ndarray] = None,
    ) -> None:
        self.pooled.add({"score": score}, anomaly, f"frame {self.frames}")
        self.frames += 1
        self.confusion.add(semantic, classes)
        if mask is not None:
            self.has_mask = True
            valid = (anomaly == 0) | (anomaly == 1)
            pred_a, gt_a = mask[valid] > 0, anomaly[valid] == 1
            self.mask_counts += [
                int((pred_a & gt_a).sum()),
                int((pred_a & ~gt_a).sum()),
                int((~pred_a & gt_a).sum()),
            ]

    def pixels(self) -> Dict[str, int]:
        return dict(self.pooled.pixels)

    def anomaly_metrics(self) -> Tuple[Optional[Dict[str, float]], Optional[str], Dict]:
        """(auroc / ap / fpr95 or None, why None, best-F1 threshold info)."""
        try:
            best, f1 = self.pooled.best_f1("score")
            metrics = self.pooled.compute().metrics["score"]
        except ValueError as exc:
            return None, str(exc), {}
        return metrics, None, {"best_f1": best, "best_f1_score": round(f1, 4)}

    def segmentation(self, names: Sequence[str]) -> Dict[str, Any]:
        names = [*names, *(str(c) for c in range(len(names), self.nc))]
        r = self.confusion.iou(names)
        present = r["present"]
        return {
            "miou": r["miou_present"] * 100 if present else None,
            "classes": len(present),
            "pixel_accuracy": r["pixel_accuracy"] * 100 if r["pixels"] else None,
            "iou": {names[c]: round(r["iou"][names[c]] * 100, 2) for c in present},
        }

    def mask_scores(self) -> Optional[Dict[str, float]]:
        if not self.has_mask:
            return None
        tp, fp, fn = (int(v) for v in self.mask_counts)
        return {
            "iou": tp / max(1, tp + fp + fn),
            "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn),
        }
