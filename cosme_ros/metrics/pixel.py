"""Pixel-level anomaly metrics: AUROC, AP, FPR95, exact, and the conventions of the package.

Conventions, shared by every function of :mod:`cosme_ros.metrics`:

* Labels follow Fishyscapes / SegmentMeIfYouCan: ``1`` = anomaly, ``0`` = in-distribution.
  **Every other label value is ignored** (void), not only ``ignore_index`` (255): a stray 2 or -1
  in a label map never counts as either class. ``ignore_index`` is accepted for call-site
  clarity and rejected if it is 0 or 1.
* Scores: higher = more anomalous. A pixel is predicted anomalous at threshold ``t`` when
  ``score >= t``. Scores are compared in their own dtype (float16 is widened to float32, which
  is exact); they are never rounded to a coarser type, because that would merge distinct values
  and change the result on ties.
* Pixel metrics are pooled over all pixels given (not averaged per image) and returned in
  **percent**: ``auroc``, ``ap`` (average precision, as scikit-learn's
  ``average_precision_score``: sum over thresholds of (R_n - R_{n-1}) * P_n, no interpolation)
  and ``fpr95`` (``fpr[searchsorted(tpr, 0.95)]`` on the ROC curve with one threshold per
  distinct score value, i.e. scikit-learn's ``roc_curve(..., drop_intermediate=False)``).
* Component metrics follow the SegmentMeIfYouCan benchmark (Chan et al., NeurIPS 2021 Datasets
  and Benchmarks) and are returned in **percent** too; see :func:`component_metrics`.

Inputs may be numpy arrays or torch tensors (moved to the CPU) of any shape.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "pixel_metrics",
    "image_metrics",
    "best_f1_threshold",
    "metrics_from_counts",
]

IGNORE_INDEX = 255
TPR_LEVEL = 0.95


# ----------------------------------------------------------------------------------------------
# input handling


def to_numpy(x) -> np.ndarray:
    """A numpy view of an array or torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def check_ignore_index(ignore_index: int) -> None:
    if ignore_index in (0, 1):
        raise ValueError(
            f"ignore_index={ignore_index} collides with the class labels (0 = in-distribution, "
            "1 = anomaly); every label other than 0 and 1 is ignored anyway"
        )


def _as_scores(scores: np.ndarray) -> np.ndarray:
    """Flat scores in a dtype that sorts and compares exactly like the input."""
    s = scores.reshape(-1)
    if s.dtype == np.float16 or s.dtype == np.bool_:
        s = s.astype(np.float32)  # exact widening; numpy's float16 sort is slow
    elif not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    return s


def split_by_label(scores, labels, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat (anomaly scores, in-distribution scores) with all other labels dropped."""
    check_ignore_index(ignore_index)
    scores, labels = to_numpy(scores), to_numpy(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {scores.shape} differs from labels shape {labels.shape}")
    s = _as_scores(scores)
    y = labels.reshape(-1)
    return s[y == 1], s[y == 0]


def check_classes(n_pos: int, n_neg: int) -> None:
    if n_pos == 0:
        raise ValueError("no anomaly pixels (label 1): AUROC, AP and FPR95 are undefined")
    if n_neg == 0:
        raise ValueError("no in-distribution pixels (label 0): AUROC, AP and FPR95 are undefined")


# ----------------------------------------------------------------------------------------------
# pixel metrics


def _rank_counts(pos: np.ndarray, neg: np.ndarray):
    """Sort both score sets and count negatives around each distinct positive score.

    Returns ``(values, pos_count, neg_below, neg_equal)``, one entry per distinct anomaly score in
    ascending order. This is all AUROC, AP and FPR95 need: the ROC and PR curves only change
    recall at thresholds that equal some anomaly score, and FPR95 is read at such a threshold.
    Sorting the in-distribution scores (numpy's SIMD quicksort, no argsort, no stable sort) and
    binary-searching the few distinct anomaly values in them is far cheaper than a full
    argsort of all pixels.
    """
    # In place: both arrays are fresh copies from boolean indexing, so no third copy is needed.
    pos.sort()
    neg.sort()
    if (pos.size and np.isnan(pos[-1])) or (neg.size and np.isnan(neg[-1])):  # NaN sorts last
        raise ValueError("scores contain NaN")
    starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
    values = pos[starts]
    pos_count = np.diff(np.r_[starts, pos.size])
    neg_below = np.searchsorted(neg, values, side="left")
    neg_equal = np.searchsorted(neg, values, side="right") - neg_below
    return values, pos_count, neg_below, neg_equal


def metrics_from_counts(pos_count, neg_below, neg_equal, n_neg: int) -> dict:
    """AUROC, AP, FPR95 (percent) from per-threshold counts in ascending score order.

    ``pos_count[j]`` anomaly pixels sit at threshold j, with ``neg_below[j]`` in-distribution
    pixels strictly below and ``neg_equal[j]`` tied with them. Thresholds with no anomaly pixel
    may be missing: they move neither recall nor the first TPR >= 0.95 point.
    """
    pos_count = np.asarray(pos_count, dtype=np.int64)
    neg_below = np.asarray(neg_below, dtype=np.int64)
    neg_equal = np.asarray(neg_equal, dtype=np.int64)
    n_pos = int(pos_count.sum())
    check_classes(n_pos, n_neg)

    # AUROC = Mann-Whitney U / (P N), ties counted half. Doubled to stay in exact integers
    # (at most 2 * P * N < 2**63 for any image set that fits in memory).
    u2 = int(np.dot(pos_count, 2 * neg_below + neg_equal))
    auroc = u2 / (2.0 * n_pos * n_neg)

    # Counts at threshold "score >= value_j": tp = anomalies at or above, fp = negatives at or
    # above. Float64 division as scikit-learn does, so the 0.95 comparison rounds identically.
    tp = n_pos - np.concatenate(([0], np.cumsum(pos_count)[:-1]))
    fp = n_neg - neg_below
    has = pos_count > 0  # histogram bins without anomalies would give 0/0 precision at the top
    ap = float(np.sum(pos_count[has] * (tp[has] / (tp[has] + fp[has])))) / n_pos

    # ROC points run in descending threshold order; searchsorted(tpr, 0.95) takes the first
    # point with tpr >= 0.95, i.e. the highest such threshold = the last in ascending order.
    reached = np.flatnonzero(tp / n_pos >= TPR_LEVEL)
    fpr95 = fp[reached[-1]] / n_neg  # reached[0] is the lowest threshold, tpr = 1, never empty
    return {"auroc": 100.0 * auroc, "ap": 100.0 * ap, "fpr95": 100.0 * float(fpr95)}


def pixel_metrics(scores, labels, ignore_index: int = IGNORE_INDEX) -> dict:
    """Exact pooled AUROC, AP and FPR95 in percent (see the module docstring for conventions).

    ``scores`` (float, higher = more anomalous) and ``labels`` (1 anomaly, 0 in-distribution,
    anything else ignored) must have the same shape. Results equal scikit-learn's
    ``roc_auc_score``, ``average_precision_score`` and ``fpr[searchsorted(tpr, 0.95)]`` on
    ``roc_curve(drop_intermediate=False)``, ties included. Cost: one (SIMD, unstable) sort of
    the valid scores, about 6 s for 100 float32 images of 2048x1024 on one core; extra memory
    about one copy of the scores plus two boolean masks.

    Raises ValueError on shape mismatch, NaN scores, or when either class has no pixel.
    """
    pos, neg = split_by_label(scores, labels, ignore_index)
    check_classes(pos.size, neg.size)
    _, pos_count, neg_below, neg_equal = _rank_counts(pos, neg)
    return metrics_from_counts(pos_count, neg_below, neg_equal, neg.size)


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> Optional[dict]:
    """:func:`pixel_metrics` of one image's pixels, or None when it lacks one of the classes
    (the per-image / per-frame rows of ``evaluate``, ``replay`` and ``demo``)."""
    labels = to_numpy(labels)
    if not (labels == 1).any() or not (labels == 0).any():
        return None
    return pixel_metrics(scores, labels)


def best_f1_threshold(scores, labels, ignore_index: int = IGNORE_INDEX) -> float:
    """The score threshold t whose mask ``score >= t`` maximises pooled pixel F1.

    The SegmentMeIfYouCan benchmark binarises anomaly maps at the best-F1 point of the pixel
    precision-recall curve before computing component metrics; this is that threshold, exact.
    (The official code then uses ``score > t``; on continuous scores the difference is nil.)
    """
    pos, neg = split_by_label(scores, labels, ignore_index)
    check_classes(pos.size, neg.size)
    values, pos_count, neg_below, _ = _rank_counts(pos, neg)
    tp = pos.size - np.concatenate(([0], np.cumsum(pos_count)[:-1]))
    fp = neg.size - neg_below
    f1 = 2 * tp / (2 * tp + fp + (pos.size - tp))  # 2TP / (2TP + FP + FN)
    return float(values[int(np.argmax(f1))])
