"""ROC and precision–recall curve points for plots (``cosme evaluate``'s roc.png and pr.png)."""

from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["CURVE_POINTS", "curve_from_counts", "curve_from_sorted", "curve_from_histograms"]

CURVE_POINTS = 1000  # quantile thresholds per class for the plotted curves


def curve_from_counts(
    tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int
) -> Dict[str, np.ndarray]:
    """Points in descending threshold order → fpr/tpr (from (0, 0)) and recall/precision."""
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    keep = (tp + fp) > 0
    precision = np.where(keep, tp / np.maximum(tp + fp, 1), 1.0)[keep]
    recall = (tp / n_pos)[keep]
    return {
        "fpr": fpr.astype(np.float32),
        "tpr": tpr.astype(np.float32),
        "recall": recall.astype(np.float32),
        "precision": precision.astype(np.float32),
    }


def curve_from_sorted(pos: np.ndarray, neg: np.ndarray) -> Dict[str, np.ndarray]:
    """ROC and PR points at quantile thresholds of both classes' sorted scores (plus the
    extremes)."""
    qs = np.linspace(0.0, 1.0, CURVE_POINTS)
    thr = np.unique(np.concatenate([np.quantile(pos, qs), np.quantile(neg, qs)]))
    tp = pos.size - np.searchsorted(pos, thr, side="left")  # score >= t
    fp = neg.size - np.searchsorted(neg, thr, side="left")
    return curve_from_counts(tp[::-1], fp[::-1], pos.size, neg.size)


def curve_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Dict[str, np.ndarray]:
    """ROC and PR points at the bin edges of score histograms (binned metrics)."""
    tp = np.cumsum(pos_hist[::-1])
    fp = np.cumsum(neg_hist[::-1])
    return curve_from_counts(tp, fp, int(pos_hist.sum()), int(neg_hist.sum()))
