"""SegmentMeIfYouCan component-level metrics (sIoU, PPV, mean F1) of binary anomaly masks.

Labels follow the package's conventions (:mod:`cosme_ros.metrics.pixel`): 1 anomaly,
0 in-distribution, every other value void.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from cosme_ros.metrics.pixel import IGNORE_INDEX, check_ignore_index, to_numpy

__all__ = ["SIOU_THRESHOLDS", "ComponentMetricAccumulator", "component_metrics"]

# The benchmark's sIoU / PPV thresholds tau in {0.25, 0.30, ..., 0.75}. Built with linspace
# exactly as the official code does, so that comparisons at e.g. 0.35 round the same way.
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a boolean mask: (number of labels incl. background, labels)."""
    import cv2  # deferred: the pixel metrics do not need OpenCV

    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n, lab


def _drop_small(lab: np.ndarray, n: int, min_size: int) -> np.ndarray:
    """Boolean per-label flag: component smaller than min_size pixels (background never)."""
    small = np.bincount(lab.reshape(-1), minlength=n) < min_size
    small[0] = False
    return small


def _image_segment_stats(pred, gt, min_pred_size: int, min_gt_size: int):
    """Per-image (sIoU of each gt component, PPV of each predicted component).

    Order of operations follows the benchmark: predicted components are found on the mask with
    void removed, then those under ``min_pred_size`` pixels are deleted; gt components under
    ``min_gt_size`` become void; all counts are then taken over non-void pixels only.
    """
    valid = (gt == 0) | (gt == 1)
    n_p, pred_cc = _components((pred != 0) & valid)
    if min_pred_size > 0:
        pred_cc[_drop_small(pred_cc, n_p, min_pred_size)[pred_cc]] = 0
    n_g, gt_cc = _components(gt == 1)
    if min_gt_size > 0:
        valid &= ~_drop_small(gt_cc, n_g, min_gt_size)[gt_cc]
    g = gt_cc[valid].astype(np.int64)
    p = pred_cc[valid].astype(np.int64)

    gt_size = np.bincount(g, minlength=n_g)
    pred_size = np.bincount(p, minlength=n_p)
    pred_on_background = np.bincount(p[g == 0], minlength=n_p)
    # Sparse contingency table of (gt component, predicted component) overlaps.
    both = (g > 0) & (p > 0)
    pairs, overlap = np.unique(g[both] * n_p + p[both], return_counts=True)
    pair_g, pair_p = np.divmod(pairs, n_p)

    # sIoU(k) = |k ∩ K̂(k)| / |(k ∪ K̂(k)) \ A(k)| with K̂(k) the predicted components touching
    # k and A(k) the pixels of the other gt components. The union minus A(k) is k itself plus
    # the pixels of K̂(k) lying on in-distribution ground (label 0).
    inter = np.bincount(pair_g, weights=overlap, minlength=n_g)
    union = gt_size + np.bincount(pair_g, weights=pred_on_background[pair_p], minlength=n_g)
    gt_ids = np.flatnonzero(gt_size[1:]) + 1
    siou = inter[gt_ids] / union[gt_ids]

    # PPV(k̂) = share of the predicted component lying on any gt component.
    hit = np.bincount(pair_p, weights=overlap, minlength=n_p)
    pred_ids = np.flatnonzero(pred_size[1:]) + 1
    ppv = hit[pred_ids] / pred_size[pred_ids]
    return siou, ppv


class ComponentMetricAccumulator:
    """Streaming SegmentMeIfYouCan component metrics; keeps two floats per component.

    See :func:`component_metrics` for the definitions.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        min_pred_size: int = 0,
        min_gt_size: int = 0,
        thresholds: Iterable[float] = SIOU_THRESHOLDS,
    ):
        check_ignore_index(ignore_index)
        self.min_pred_size = int(min_pred_size)
        self.min_gt_size = int(min_gt_size)
        self.thresholds = np.asarray(list(thresholds), dtype=np.float64)
        self._siou: list[np.ndarray] = []
        self._ppv: list[np.ndarray] = []

    def update(self, pred_mask, gt_label) -> None:
        """Add one image: a 2-D predicted mask (nonzero = anomaly) and its 2-D label map."""
        pred, gt = to_numpy(pred_mask), to_numpy(gt_label)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(
                f"need 2-D mask and label of the same shape, got {pred.shape} and {gt.shape}"
            )
        siou, ppv = _image_segment_stats(pred, gt, self.min_pred_size, self.min_gt_size)
        self._siou.append(siou)
        self._ppv.append(ppv)

    def compute(self) -> dict:
        siou = np.concatenate(self._siou) if self._siou else np.zeros(0)
        ppv = np.concatenate(self._ppv) if self._ppv else np.zeros(0)
        if siou.size == 0:
            raise ValueError("no ground-truth anomaly component: component metrics are undefined")
        result = {
            "siou_gt": 100.0 * float(siou.mean()),
            # No predicted component at all: PPV is undefined (the official code divides by 0).
            "ppv": 100.0 * float(ppv.mean()) if ppv.size else float("nan"),
        }
        f1 = []
        for t in self.thresholds:
            tp = np.count_nonzero(siou >= t)
            fn = siou.size - tp
            fp = np.count_nonzero(ppv < t)
            f1.append(2.0 * tp / (2 * tp + fn + fp))  # > 0 denominators: siou is non-empty
        result["mean_f1"] = 100.0 * float(np.mean(f1))
        for t, v in zip(self.thresholds, f1):
            if t in (0.25, 0.5, 0.75):
                result[f"f1_{round(100 * t)}"] = 100.0 * v
        result["n_gt"] = int(siou.size)
        result["n_pred"] = int(ppv.size)
        return result


def component_metrics(
    pred_masks,
    gt_labels,
    ignore_index: int = IGNORE_INDEX,
    min_pred_size: int = 0,
    min_gt_size: int = 0,
    thresholds: Iterable[float] = SIOU_THRESHOLDS,
) -> dict:
    """SegmentMeIfYouCan component-level metrics over a dataset, in percent.

    ``pred_masks``: binary anomaly masks (nonzero = anomaly, e.g. ``score >= t`` with ``t`` from
    :func:`best_f1_threshold`), ``gt_labels``: label maps (1 anomaly, 0 in-distribution, every
    other value void). Either a sequence of 2-D arrays/tensors, an ``N x H x W`` array, or one
    2-D image. Components are 8-connected; void pixels are removed from the prediction before
    its components are found and are never counted.

    * ``siou_gt``: mean over all gt components of the dataset (not per image) of
      sIoU(k) = |k ∩ K̂(k)| / |(k ∪ K̂(k)) \\ A(k)|, K̂(k) = predicted components touching k,
      A(k) = pixels of the other gt components (so one prediction covering two objects is not
      punished twice).
    * ``ppv``: mean over all predicted components of |k̂ ∩ gt anomaly| / |k̂| (nan if none).
    * ``mean_f1``: mean over ``thresholds`` (0.25, 0.30, ..., 0.75) of F1 = 2TP / (2TP + FN + FP),
      TP/FN = gt components with sIoU >= / < tau, FP = predicted components with PPV < tau,
      counts summed over the dataset. ``f1_25``, ``f1_50``, ``f1_75`` are the single thresholds;
      ``n_gt`` / ``n_pred`` the component counts.

    ``min_pred_size`` / ``min_gt_size`` reproduce the benchmark's size filters (predicted
    components below it are deleted; gt components below it become void): 500 / 100 for the
    Anomaly Track, 50 / 10 for the Obstacle Track. They default to 0 (no filtering).
    Deviation from the official code: there, labels other than 0/1/255 stay inside the region of
    interest as background; here they are void (the benchmark's label maps only hold 0, 1, 255).

    Raises ValueError if no gt anomaly component exists in the whole dataset, or on shape
    mismatch.
    """
    acc = ComponentMetricAccumulator(ignore_index, min_pred_size, min_gt_size, thresholds)
    preds, gts = _image_list(pred_masks), _image_list(gt_labels)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks but {len(gts)} label maps")
    for pred, gt in zip(preds, gts):
        acc.update(pred, gt)
    return acc.compute()


def _image_list(images) -> list:
    """A single 2-D image, an N x H x W stack, or a sequence -> list of 2-D images."""
    if hasattr(images, "ndim"):
        if images.ndim == 2:
            return [images]
        if images.ndim == 3:
            return list(images)
        raise ValueError(f"expected 2-D images or an N x H x W stack, got {images.ndim}-D")
    return list(images)
