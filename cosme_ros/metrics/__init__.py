"""Metrics: pixel-level anomaly metrics (exact and pooled), curves, components, segmentation.

- :mod:`.pixel`: AUROC, AP, FPR95 of labelled pixels, exact, and the conventions every module
  here follows (1 anomaly, 0 in-distribution, all else void; higher score = more anomalous);
- :mod:`.pooled`: over a dataset or a drive — exact with a memory guard, or binned;
- :mod:`.curves`: ROC and precision–recall points for plots;
- :mod:`.components`: SegmentMeIfYouCan's component metrics;
- :mod:`.segmentation`: confusion matrix, IoU and mIoU.
"""

from cosme_ros.metrics.components import (
    SIOU_THRESHOLDS,
    ComponentMetricAccumulator,
    component_metrics,
)
from cosme_ros.metrics.pixel import IGNORE_INDEX, best_f1_threshold, image_metrics, pixel_metrics
from cosme_ros.metrics.pooled import PixelMetricAccumulator, PooledPixels, PooledResult
from cosme_ros.metrics.segmentation import ConfusionMatrix, format_iou_table, iou_from_confusion

__all__ = [
    "IGNORE_INDEX",
    "SIOU_THRESHOLDS",
    "pixel_metrics",
    "image_metrics",
    "best_f1_threshold",
    "PixelMetricAccumulator",
    "PooledPixels",
    "PooledResult",
    "ComponentMetricAccumulator",
    "component_metrics",
    "ConfusionMatrix",
    "iou_from_confusion",
    "format_iou_table",
]
